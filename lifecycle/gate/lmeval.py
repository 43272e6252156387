"""Run the gate's lm-eval tasks and return per-item scores: the only module that imports lm_eval.

Tasks are named as in a recipe's gate: a folder under `evals/` (searched first) or a standard lm-eval task,
group or tag whose data is on this machine. `resolve_tasks` checks every name and data file before anything
long starts, and renders the `evals/` task YAMLs into a work folder with absolute data paths, so they load
from any cwd. The tasks then run against a running OpenAI-compatible server (`evaluate_server`: lm-eval's
`local-completions`, or `local-chat-completions` for chat generation) or in-process through lm-eval's `hf`
backend (`evaluate_hf`). Each task gives a `TaskRun` of per-item scores keyed by the item's `id` field, and
`pair` turns the runs of the candidate and baseline models into the gate's `TaskScores`.

Metric names: lm-eval's metric name (`acc`, `exact_match`), or `metric,filter` when the task's filter is not
lm-eval's default `none` (gsm8k: `exact_match,strict-match`), as in lm-eval's own results. Only metrics that
lm-eval aggregates with a plain mean are scored per item; corpus metrics (BLEU...) cannot be paired.
A task under `evals/` is scored through the model's chat template when its YAML says
`metadata: {apply_chat_template: true}`; standard tasks are scored on raw text, as lm-eval ships them.
Special tokens are the same on every backend (lm-eval's defaults differ: its `hf` backend adds the tokenizer's
BOS to raw text, `local-completions` adds none): raw text gets the tokenizer's default (BOS for Llama-style
tokenizers, as in pre-training); a chat prompt gets none beyond what the template writes, as in fine-tuning.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lifecycle.errors import GateError
from lifecycle.gate.decide import MetricScores, TaskScores
from lifecycle.gate.evals import problems_of, render_evals
from lifecycle.manifest import write_json_atomic

if TYPE_CHECKING:
    from lm_eval.api.model import LM
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager

Backend = Literal["hf", "local-completions", "local-chat-completions"]
Limit = int | Mapping[str, int | None] | None
"""Items per task: None (all), one number for every task, or per task name (GateTask.limit; absent: all)."""

_RENDERED = "lm-eval-tasks"  # under the work folder: the rendered evals/ YAMLs
_DATASETS_CACHE = "datasets-cache"  # under the work folder: Arrow copies of the evals/ data
_DEFAULT_FILTER = "none"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ResolvedTask(_Frozen):
    """One gate task, checked: it exists, its data loads, and these are the metrics it scores per item."""

    name: str
    source: Literal["evals", "lm-eval"] = Field(description="A folder under evals/, or lm-eval's registry.")
    leaves: tuple[str, ...] = Field(
        description="The lm-eval tasks it runs: itself, or a group's/tag's members."
    )
    output_type: str = Field(description="lm-eval's request type: generate_until, multiple_choice...")
    metrics: dict[str, bool] = Field(description="Per-item metrics -> higher is better.")
    unpaired_metrics: tuple[str, ...] = Field(
        default=(), description="Metrics the task reports only for the whole corpus (not usable by the gate)."
    )
    chat_template: bool = Field(description="Prompts go through the model's chat template.")
    items: int = Field(description="Items in the evaluated split (before any limit).")


class ResolvedTasks(_Frozen):
    """The checked tasks of one gate, and the work folder holding their rendered YAMLs."""

    tasks: tuple[ResolvedTask, ...]
    include_path: Path = Field(description="The rendered evals/ task YAMLs, with absolute data paths.")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def select(self, names: Iterable[str]) -> ResolvedTasks:
        """The same resolution restricted to `names` (e.g. to time one task at a time)."""
        wanted = list(names)
        by_name = {t.name: t for t in self.tasks}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise GateError(f"tasks {missing} were not resolved (resolved: {self.names})")
        return self.model_copy(update={"tasks": tuple(by_name[n] for n in wanted)})


class TaskRun(_Frozen):
    """One task evaluated on one model: per-item scores for every per-item metric."""

    task: str
    backend: Backend
    metrics: dict[str, dict[str, float]] = Field(description="metric -> item id -> score.")
    higher_is_better: dict[str, bool]
    aggregate: dict[str, float] = Field(description="metric -> mean over the items: the task's score.")
    outputs: dict[str, str] = Field(
        default_factory=dict, description="Generation tasks: item id -> the model's answer (first filter's)."
    )
    prompts: dict[str, str] = Field(
        default_factory=dict,
        description="Generation tasks: item id -> the prompt as sent (chat endpoint: the messages, as JSON).",
    )
    n: int = Field(description="Items scored.")
    wall_s: float = Field(description="Wall time of lm-eval's run of this task (requests and scoring).")


# ----------------------------------------------------------------------------------------------- resolve


def resolve_tasks(
    names: Sequence[str], evals_dir: Path, workdir: Path, *, names_cache: Path | None = None
) -> ResolvedTasks:
    """Check that every task exists and its data loads; render evals/ YAMLs into `workdir`.

    Raises GateError listing every problem (unknown name, with a suggestion; missing data file; data that does
    not load). lm-eval's own registry is indexed (~25 s on 2 cores, once per process) only if a name is not under
    evals/; its names are kept in `names_cache` (a folder), per lm-eval version, so that a misspelt name is
    refused at once the next time.
    """
    evals_dir, workdir = Path(evals_dir).resolve(), Path(workdir).resolve()
    include_path = workdir / _RENDERED
    data_problems = render_evals(evals_dir, include_path, workdir / _DATASETS_CACHE)
    local = _local_task_manager(include_path)
    unique = list(dict.fromkeys(names))
    problems = [f"task {name!r} is named more than once" for name in unique if names.count(name) > 1]
    blocked: set[str] = set()  # tasks that cannot be loaded: unknown, or a data file is missing

    def block(name: str, problem: str) -> None:
        blocked.add(name)
        problems.append(f"task {name!r}: {problem}")

    unknown = [name for name in unique if name not in local.all_tasks]
    if unknown:
        registered = registry_names(names_cache)  # only when a name is not under evals/
        known = [*local.all_tasks, *registered["subtasks"], *registered["groups"]]
        where = f"not a task under {evals_dir} nor in lm-eval's task registry"
        for name in unknown:
            if name not in registered["tasks"]:
                block(name, f"unknown: {where}{_suggest(name, known)}")
    for name in unique:
        if name in local.all_tasks:
            yaml_path = local.task_index[name].yaml_path
            for problem in problems_of(Path(yaml_path) if yaml_path else None, data_problems, include_path):
                block(name, problem)

    resolved: list[ResolvedTask] = []
    for name in unique:
        if name in blocked:
            continue
        source: Literal["evals", "lm-eval"] = "evals" if name in local.all_tasks else "lm-eval"
        manager = local if source == "evals" else _registry()
        try:
            leaves = _load(manager, name)
        except Exception as exc:  # lm-eval and datasets raise many types; all mean "cannot load"
            problems.append(f"task {name!r}: {_load_failure(manager, name, source, exc)}")
            continue
        task, why_not = _describe(name, source, leaves)
        if why_not:
            problems.append(f"task {name!r}: {why_not}")
        else:
            resolved.append(task)
    if problems:
        raise GateError("the gate's tasks cannot be run:\n" + "\n".join(f"  {p}" for p in problems))
    return ResolvedTasks(tasks=tuple(resolved), include_path=include_path)


def available_metrics(resolved: ResolvedTasks) -> dict[str, set[str]]:
    """Per-item metrics of each task: the input `check_rules_against_metrics` needs before any long work."""
    return {t.name: set(t.metrics) for t in resolved.tasks}


def _describe(
    name: str, source: Literal["evals", "lm-eval"], leaves: dict[str, Task]
) -> tuple[ResolvedTask, str | None]:
    """What a loaded task (or group) scores, and a problem if it cannot be gated."""
    from lm_eval.api.metrics import mean

    per_leaf: list[dict[str, bool]] = []
    unpaired: set[str] = set()
    for task in leaves.values():
        hib = task.higher_is_better()
        filters = [f.name for f in getattr(task, "_filters", [])] or [_DEFAULT_FILTER]
        metrics: dict[str, bool] = {}
        for metric, aggregation in task.aggregation().items():
            for filt in filters:
                key = _metric_key(metric, filt)
                if aggregation is mean:
                    metrics[key] = bool(hib.get(metric, True))
                else:
                    unpaired.add(key)
        per_leaf.append(metrics)
    common = set.intersection(*(set(m) for m in per_leaf)) if per_leaf else set()
    flags = {bool((task.config.metadata or {}).get("apply_chat_template", False)) for task in leaves.values()}
    output_types = sorted({str(task.config.output_type) for task in leaves.values()})
    resolved = ResolvedTask(
        name=name,
        source=source,
        leaves=tuple(leaves),
        output_type="+".join(output_types),
        metrics={m: per_leaf[0][m] for m in sorted(common)},
        unpaired_metrics=tuple(sorted(unpaired | (set().union(*per_leaf) - common))),
        chat_template=flags == {True},
        items=sum(len(task.eval_docs) for task in leaves.values()),
    )
    if not leaves:
        return resolved, "it has no tasks"
    if len(flags) > 1:
        return resolved, "its members disagree on metadata.apply_chat_template"
    return resolved, None


# ----------------------------------------------------------------------------------------------- evaluate


def evaluate_server(
    resolved: ResolvedTasks,
    *,
    completions_url: str,
    chat_url: str | None = None,
    model_name: str,
    tokenizer_dir: Path,
    limit: Limit = None,
    num_concurrent: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    max_length: int | None = None,
    timeout_s: int = 300,
    log_path: Path | None = None,
) -> list[TaskRun]:
    """Evaluate every task against a running OpenAI-compatible server, greedily; one TaskRun per task.

    lm-eval's own log (its known-benign notes such as "Batch size > 1 detected") goes to `log_path`, not the
    terminal.

    `completions_url` is the full `/v1/completions` URL: lm-eval's `local-completions` sends token ids made
    with the tokenizer in `tokenizer_dir` (so log-likelihood tasks work: it asks for `echo` + `logprobs`),
    applying its chat template itself for chat tasks. With `chat_url` (the full `/v1/chat/completions` URL),
    chat tasks that only generate go through `local-chat-completions` instead, and the server applies the
    template (one prompt per request). `model_name` is the served name (an adapter's name selects it).
    `max_length` (context, tokens) defaults to the model's `max_position_embeddings` in `tokenizer_dir`.
    """
    with library_logs_to(log_path):
        return _evaluate_server(
            resolved,
            completions_url=completions_url,
            chat_url=chat_url,
            model_name=model_name,
            tokenizer_dir=tokenizer_dir,
            limit=limit,
            num_concurrent=num_concurrent,
            batch_size=batch_size,
            seed=seed,
            max_length=max_length,
            timeout_s=timeout_s,
        )


@contextlib.contextmanager
def library_logs_to(path: Path | None) -> Iterator[None]:
    """Send the `lm_eval` logger to a file (or nowhere) for the duration, instead of the terminal."""
    logger = logging.getLogger("lm_eval")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    handler: logging.Handler = logging.NullHandler()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    # its progress bars ("Tokenizing inputs", requests) ignore TQDM_DISABLE: they go to the same file
    sink = path.open("a") if path is not None else open(os.devnull, "w")  # noqa: SIM115
    try:
        with sink, contextlib.redirect_stderr(sink):
            yield
    finally:
        handler.close()
        logger.setLevel(saved[0])
        logger.propagate, logger.handlers = saved[1], saved[2]


def _evaluate_server(
    resolved: ResolvedTasks,
    *,
    completions_url: str,
    chat_url: str | None,
    model_name: str,
    tokenizer_dir: Path,
    limit: Limit,
    num_concurrent: int,
    batch_size: int,
    seed: int,
    max_length: int | None,
    timeout_s: int,
) -> list[TaskRun]:
    from lm_eval.api.registry import get_model

    tokenizer_dir = Path(tokenizer_dir).resolve()
    common = {"model": model_name, "num_concurrent": num_concurrent, "max_retries": 3, "seed": seed}
    common["timeout"] = timeout_s
    length = max_length or _max_positions(tokenizer_dir)

    def completions_lm(add_bos: bool) -> LM:
        return get_model("local-completions")(
            base_url=completions_url,
            tokenizer=str(tokenizer_dir),
            tokenizer_backend="huggingface",  # not "auto": that probes the server's /tokenize and may pick it
            tokenized_requests=True,
            add_bos_token=add_bos,
            batch_size=batch_size,
            **({"max_length": length} if length else {}),
            **common,
        )

    templated = completions_lm(add_bos=False)  # chat prompts carry their own special tokens, as in training
    raw = completions_lm(add_bos=True) if _adds_bos(templated.tokenizer) else templated
    chat: LM | None = None
    runs: list[TaskRun] = []
    for task in resolved.tasks:
        if not task.chat_template:
            runs.append(_run(raw, "local-completions", resolved, task, limit, seed))
            continue
        _need_chat_template(templated.tokenizer, tokenizer_dir, task.name)
        if chat_url and task.output_type == "generate_until":
            if chat is None:
                chat = get_model("local-chat-completions")(base_url=chat_url, **common)
            runs.append(_run(chat, "local-chat-completions", resolved, task, limit, seed))
        else:
            runs.append(_run(templated, "local-completions", resolved, task, limit, seed))
    return runs


def evaluate_hf(
    resolved: ResolvedTasks,
    model_dir: Path,
    *,
    limit: Limit = None,
    batch_size: int | str = 16,
    seed: int = 0,
    device: str | None = None,
    dtype: str = "auto",
) -> list[TaskRun]:
    """Evaluate every task in this process with lm-eval's `hf` backend (transformers), greedily.

    The model loads once for all tasks. `device` defaults to cuda when available, else cpu; `dtype` "auto"
    keeps the checkpoint's dtype, as vLLM does.
    """
    from lm_eval.models.huggingface import HFLM

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = Path(model_dir).resolve()
    lm = HFLM(pretrained=str(model_dir), device=device, batch_size=batch_size, dtype=dtype)
    runs: list[TaskRun] = []
    for task in resolved.tasks:
        if task.chat_template:
            _need_chat_template(lm.tokenizer, model_dir, task.name)
        # The same special tokens as evaluate_server: none added to chat prompts, the tokenizer's default
        # (None: lm-eval's own choice, BOS for Llama-style tokenizers) to raw text.
        lm.add_bos_token = False if task.chat_template else None
        runs.append(_run(lm, "hf", resolved, task, limit, seed))
    return runs


def _run(
    lm: LM, backend: Backend, resolved: ResolvedTasks, task: ResolvedTask, limit: Limit, seed: int
) -> TaskRun:
    """One lm-eval run of one task; per-item scores out of its logged samples."""
    import lm_eval

    manager = _local_task_manager(resolved.include_path) if task.source == "evals" else _registry()
    n_limit = limit.get(task.name) if isinstance(limit, Mapping) else limit
    started = time.monotonic()
    try:
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task.name],
            task_manager=manager,
            limit=n_limit,
            log_samples=True,
            apply_chat_template=task.chat_template,
            bootstrap_iters=0,  # lm-eval's stderr bootstrap: the gate runs its own paired statistics
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except Exception as exc:
        raise GateError(f"lm-eval failed on task {task.name!r} ({backend}): {_first_line(exc)}") from exc
    wall_s = time.monotonic() - started
    if out is None:
        raise GateError(f"lm-eval returned no results for task {task.name!r} ({backend})")
    return _task_run(task, backend, out["samples"], wall_s)


def _task_run(
    task: ResolvedTask, backend: Backend, samples: Mapping[str, list[dict[str, Any]]], wall_s: float
) -> TaskRun:
    """Per-item scores keyed by the doc's `id` field (else its index, `#N`); group members get a prefix."""
    scores: dict[str, dict[str, float]] = {m: {} for m in task.metrics}
    outputs: dict[str, str] = {}
    prompts: dict[str, str] = {}
    problems: list[str] = []
    for leaf in task.leaves:
        prefix = f"{leaf}/" if task.leaves != (task.name,) else ""
        for sample in samples.get(leaf, []):
            doc = sample.get("doc") or {}
            raw_id = doc.get("id") if isinstance(doc, Mapping) else None
            item = prefix + (str(raw_id) if isinstance(raw_id, (str, int)) else f"#{sample['doc_id']}")
            answer = sample.get("filtered_resps")
            if isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], str):
                outputs.setdefault(item, answer[0])
                prompts.setdefault(item, _prompt_of(sample))
            for metric in sample.get("metrics", []):
                key = _metric_key(metric, sample.get("filter", _DEFAULT_FILTER))
                if key not in scores:
                    continue
                value = float(sample[metric])
                if not math.isfinite(value):
                    problems.append(f"item {item!r}: {key} is {value}")
                elif item in scores[key]:
                    problems.append(
                        f"item id {item!r} appears more than once; ids must be unique to pair items"
                    )
                scores[key][item] = value
    if problems:
        shown = list(dict.fromkeys(problems))
        more = f"\n  ... and {len(shown) - 5} more" if len(shown) > 5 else ""
        raise GateError(f"task {task.name!r}: " + "\n  ".join(shown[:5]) + more)
    n = max((len(v) for v in scores.values()), default=0)
    return TaskRun(
        task=task.name,
        backend=backend,
        metrics=scores,
        higher_is_better=dict(task.metrics),
        aggregate={m: sum(v.values()) / len(v) for m, v in scores.items() if v},
        outputs=outputs,
        prompts=prompts,
        n=n,
        wall_s=wall_s,
    )


# ----------------------------------------------------------------------------------------------- pair


def pair(
    candidate: Sequence[TaskRun], baseline: Sequence[TaskRun], merged: Sequence[TaskRun] | None = None
) -> list[TaskScores]:
    """The gate's input: each task's per-item scores of the candidate beside the baseline (and merged) model.

    Item ids are not checked here: `decide` reports any mismatch. Raises GateError when the runs do not cover
    the same tasks and metrics.
    """
    problems: list[str] = []
    base_by = _by_task(baseline, "baseline", problems)
    merged_by = _by_task(merged, "merged", problems) if merged is not None else None
    cand_by = _by_task(candidate, "candidate", problems)
    for name in [*base_by, *(merged_by or {})]:
        if name not in cand_by:
            problems.append(f"task {name!r}: scored for another model but not for the candidate")
    out: list[TaskScores] = []
    for name, run in cand_by.items():
        others = {"baseline": base_by.get(name)}
        if merged_by is not None:
            others["merged"] = merged_by.get(name)
        for role, other in others.items():
            if other is None:
                problems.append(f"task {name!r}: no {role} run")
            elif set(other.metrics) != set(run.metrics):
                problems.append(
                    f"task {name!r}: the {role} run scores {sorted(other.metrics)}, the candidate "
                    f"{sorted(run.metrics)}"
                )
        if problems:
            continue
        metrics = {
            metric: MetricScores(
                candidate=items,
                baseline=base_by[name].metrics[metric],
                merged=merged_by[name].metrics[metric] if merged_by is not None else None,
                higher_is_better=run.higher_is_better[metric],
            )
            for metric, items in run.metrics.items()
        }
        out.append(TaskScores(task=name, metrics=metrics))
    if problems:
        raise GateError("the runs cannot be paired:\n" + "\n".join(f"  {p}" for p in problems))
    return out


def _by_task(runs: Sequence[TaskRun], role: str, problems: list[str]) -> dict[str, TaskRun]:
    by: dict[str, TaskRun] = {}
    for run in runs:
        if run.task in by:
            problems.append(f"task {run.task!r}: the {role} has more than one run")
        by[run.task] = run
    return by


# ----------------------------------------------------------------------------------------------- helpers


def registry_names(cache: Path | None) -> dict[str, list[str]]:
    """The names in lm-eval's task registry ("tasks": every name `load` takes, "subtasks", "groups"), read from
    `cache` when this lm-eval version's index was taken before, else indexed (and kept there)."""
    from importlib.metadata import version

    path = cache / f"lm-eval-{version('lm_eval')}-task-names.json" if cache is not None else None
    if path is not None and path.is_file():
        with contextlib.suppress(OSError, ValueError):
            kept = json.loads(path.read_text())
            if isinstance(kept, dict) and all(
                isinstance(kept.get(k), list) for k in ("tasks", "subtasks", "groups")
            ):
                return kept
    registry = _registry()
    names = {
        "tasks": sorted(registry.all_tasks),
        "subtasks": sorted(registry.all_subtasks),
        "groups": sorted(registry.all_groups),
    }
    if path is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, names)
    return names


@functools.cache
def _registry() -> TaskManager:
    """lm-eval's own task index (~10 s to build: it parses every shipped YAML). Read-only, so built once."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _local_task_manager(include_path: Path) -> TaskManager:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_path), include_defaults=False)


def _load(manager: TaskManager, name: str) -> dict[str, Task]:
    """The leaf tasks of a task, group or tag; loading them loads (and so checks) their data."""
    return dict(manager.load([name])["tasks"])


def _load_failure(manager: TaskManager, name: str, source: str, exc: Exception) -> str:
    entry = manager.task_index.get(name)
    dataset = (entry.cfg or {}).get("dataset_path") if entry is not None else None
    if source == "lm-eval":
        where = f"dataset {dataset!r}" if isinstance(dataset, str) else "its data"
        return (
            f"{where} is not on this machine (not in the Hugging Face datasets cache) or could not be "
            f"loaded: {_first_line(exc)}"
        )
    return f"its data could not be loaded: {_first_line(exc)}"


def _prompt_of(sample: Mapping[str, Any]) -> str:
    context = sample["arguments"][0][0]  # generate_until: (context, generation kwargs)
    # Chat requests hold the messages as JSON in a 1-tuple (lm-eval's JsonChatStr, a NamedTuple).
    if isinstance(context, (tuple, list)) and len(context) == 1 and isinstance(context[0], str):
        return context[0]
    return context if isinstance(context, str) else str(context)


def _metric_key(metric: str, filter_name: str) -> str:
    return metric if filter_name == _DEFAULT_FILTER else f"{metric},{filter_name}"


def _max_positions(model_dir: Path) -> int | None:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer starts plain text with BOS by default (Llama-style tokenizers do)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("x").input_ids
    return bool(ids) and ids[0] == bos


def _need_chat_template(tokenizer: Any, model_dir: Path, task: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise GateError(
            f"task {task!r} is scored through the model's chat template, "
            f"but the tokenizer in {model_dir} has none"
        )


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(dict.fromkeys(choices)), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
