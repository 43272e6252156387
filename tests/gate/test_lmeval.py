"""The gate's lm-eval runner: task resolution and its errors, per-item scores through `hf` and through vLLM.

Resolution errors must come before any long work and list every problem at once. The `hf` runs use the tiny
base with small limits (a few seconds); the vLLM test starts one real server for the module (~30-40 s) and
checks that the served model's per-item scores agree with the in-process ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import lifecycle
from lifecycle.engines.vllm import VllmSpec
from lifecycle.engines.vllm_server import VllmServer, serve
from lifecycle.errors import GateError
from lifecycle.gate.decide import check_rules_against_metrics, decide
from lifecycle.gate.lmeval import (
    ResolvedTasks,
    TaskRun,
    available_metrics,
    evaluate_hf,
    evaluate_server,
    pair,
    resolve_tasks,
)
from lifecycle.recipe.schema import GateSpec
from lifecycle.settings import load_settings

REPO = Path(lifecycle.__file__).resolve().parent.parent
EVALS = REPO / "evals"
TICKETS = REPO / "recipes" / "data" / "support-tickets" / "eval.jsonl"
FACTS = EVALS / "data" / "general-facts.jsonl"
SHIPPED = ["support-tickets", "general-facts"]


def _ids(path: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return [row["id"] for row in rows]


def _labels(path: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["id"]: row["messages"][-1]["content"] for row in rows}


def _task_yaml(name: str, data: Path | str, *, extra: str = "") -> str:
    """A minimal multiple-choice task in the shape of evals/general-facts."""
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n" + extra
    )


@pytest.fixture(scope="session")
def base_model(request: pytest.FixtureRequest) -> Path:
    """conftest's `tiny_base` when there is one, else the tiny base from the settings' cache (built once)."""
    try:
        return Path(request.getfixturevalue("tiny_base"))
    except pytest.FixtureLookupError:
        from lifecycle.train.tiny_base import build_tiny_llama

        return build_tiny_llama(load_settings(cwd=REPO).cache_dir / "base-models")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> ResolvedTasks:
    return resolve_tasks(SHIPPED, EVALS, tmp_path_factory.mktemp("gate-work"))


# ----------------------------------------------------------------------------------------------- resolve


def test_shipped_tasks_resolve_from_any_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the shipped YAMLs hold paths relative to themselves, not to the cwd
    resolved = resolve_tasks(SHIPPED, EVALS, tmp_path / "work")
    tickets, facts = resolved.tasks
    assert (tickets.name, tickets.source, tickets.output_type) == (
        "support-tickets",
        "evals",
        "generate_until",
    )
    assert tickets.chat_template and not facts.chat_template
    assert (tickets.items, facts.items) == (100, 216)
    assert facts.output_type == "multiple_choice"
    rendered = (resolved.include_path / "support-tickets" / "support-tickets.yaml").read_text()
    assert f"test: {TICKETS}" in rendered
    assert "../../recipes" in (EVALS / "support-tickets" / "support-tickets.yaml").read_text()  # untouched


def test_available_metrics_check_the_rules_before_any_run(shipped: ResolvedTasks) -> None:
    metrics = available_metrics(shipped)
    assert metrics == {"support-tickets": {"exact_match"}, "general-facts": {"acc", "acc_norm"}}
    assert shipped.tasks[0].metrics == {"exact_match": True}
    spec = GateSpec.model_validate(
        {
            "tasks": [
                {"task": "support-tickets", "rules": [{"kind": "improve", "metric": "exact_match"}]},
                {"task": "general-facts", "rules": [{"kind": "no_regress", "metric": "accuracy"}]},
            ]
        }
    )
    (problem,) = check_rules_against_metrics(spec, metrics)
    assert "'accuracy'" in problem and "acc, acc_norm" in problem


def test_missing_data_file_is_reported_without_loading(tmp_path: Path) -> None:
    evals = tmp_path / "evals"
    (evals / "mine").mkdir(parents=True)
    (evals / "mine" / "mine.yaml").write_text(_task_yaml("mine", "../data/absent.jsonl"))
    (evals / "ok").mkdir()
    (evals / "ok" / "ok.yaml").write_text(_task_yaml("ok", FACTS))
    (evals / "unused").mkdir()  # a broken task nobody names does not matter
    (evals / "unused" / "unused.yaml").write_text(_task_yaml("unused", "nowhere.jsonl"))
    with pytest.raises(GateError) as caught:
        resolve_tasks(["ok", "mine"], evals, tmp_path / "work")
    message = str(caught.value)
    assert f"task 'mine': data file {evals / 'data' / 'absent.jsonl'} does not exist" in message
    assert "'ok'" not in message and "unused" not in message


def test_every_problem_at_once_unknown_names_and_absent_standard_data(tmp_path: Path) -> None:
    """Unknown names (with a suggestion), a local task without data, a standard task whose data is absent."""
    evals = tmp_path / "evals"
    (evals / "support-tickets").mkdir(parents=True)
    (evals / "support-tickets" / "t.yaml").write_text(_task_yaml("support-tickets", FACTS))
    (evals / "bad").mkdir()
    (evals / "bad" / "bad.yaml").write_text(_task_yaml("bad", "missing.jsonl"))
    names = ["support-tikets", "bad", "arc_easy", "no-such-task-anywhere", "bad"]
    with pytest.raises(GateError) as caught:
        resolve_tasks(names, evals, tmp_path / "work")
    lines = str(caught.value).splitlines()[1:]
    assert len(lines) == 5, lines
    text = "\n".join(lines)
    assert "task 'bad' is named more than once" in text
    assert "task 'support-tikets': unknown" in text and "did you mean 'support-tickets'?" in text
    assert "task 'no-such-task-anywhere': unknown" in text
    assert "task 'bad': data file" in text
    # arc_easy is a real lm-eval task; no hub here and nothing cached, so its data cannot load
    assert "task 'arc_easy': dataset 'allenai/ai2_arc' is not on this machine" in text


# ----------------------------------------------------------------------------------------------- hf backend


def test_evaluate_hf_gives_per_item_scores_keyed_by_id(shipped: ResolvedTasks, base_model: Path) -> None:
    runs = evaluate_hf(shipped, base_model, limit={"support-tickets": 6, "general-facts": 8})
    tickets, facts = runs
    assert (tickets.task, tickets.backend, tickets.n) == ("support-tickets", "hf", 6)
    assert list(tickets.metrics["exact_match"]) == _ids(TICKETS, 6)
    labels = _labels(TICKETS)
    for item, score in tickets.metrics["exact_match"].items():  # exact match after stripping whitespace
        assert score == float(tickets.outputs[item].strip() == labels[item])
    # The prompt is the one the fine-tune trained on: trl renders system + user with the generation prompt
    # and tokenizes it without adding special tokens.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    rows = {row["id"]: row for row in map(json.loads, TICKETS.read_text().splitlines())}
    for item, prompt in tickets.prompts.items():
        chat = rows[item]["messages"][:-1]
        assert prompt == tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        trained = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)
        assert tokenizer(prompt, add_special_tokens=False).input_ids == trained
        assert trained.count(tokenizer.bos_token_id) == 1
    assert list(facts.metrics) == ["acc", "acc_norm"] and facts.outputs == {}
    assert list(facts.metrics["acc"]) == _ids(FACTS, 8)
    assert set(facts.metrics["acc"].values()) <= {0.0, 1.0}
    assert facts.aggregate["acc"] == sum(facts.metrics["acc"].values()) / 8
    assert facts.higher_is_better == {"acc": True, "acc_norm": True}

    spec = GateSpec.model_validate(
        {
            "tasks": [
                {"task": "support-tickets", "rules": [{"kind": "improve", "metric": "exact_match"}]},
                {
                    "task": "general-facts",
                    "rules": [{"kind": "no_regress", "metric": "acc", "max_drop": 0.1}],
                },
            ]
        }
    )
    verdict = decide(spec, pair(runs, runs, merged=runs))
    by_rule = {(r.task, r.rule): r.status for r in verdict.rules}
    assert by_rule[("support-tickets", "improve")] != "pass"  # a model does not improve on itself
    assert by_rule[("general-facts", "no_regress")] == "pass"


def test_group_members_are_prefixed_and_docs_without_id_use_their_index(
    tmp_path: Path, base_model: Path
) -> None:
    evals = tmp_path / "evals"
    (evals / "facts").mkdir(parents=True)
    no_ids = tmp_path / "no-ids.jsonl"
    rows = [json.loads(line) for line in FACTS.read_text().splitlines()[:3]]
    no_ids.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "id"}) + "\n" for r in rows))
    (evals / "facts" / "a.yaml").write_text(_task_yaml("facts-a", FACTS))
    (evals / "facts" / "b.yaml").write_text(_task_yaml("facts-b", no_ids))
    (evals / "facts" / "group.yaml").write_text("group: facts-both\ntask: [facts-a, facts-b]\n")
    resolved = resolve_tasks(["facts-both"], evals, tmp_path / "work")
    assert resolved.tasks[0].leaves == ("facts-a", "facts-b")
    (run,) = evaluate_hf(resolved, base_model, limit=2)
    assert sorted(run.metrics["acc"]) == sorted(
        [*(f"facts-a/{item}" for item in _ids(FACTS, 2)), "facts-b/#0", "facts-b/#1"]
    )
    assert run.n == 4


def test_duplicate_item_ids_are_an_error(tmp_path: Path, base_model: Path) -> None:
    evals = tmp_path / "evals"
    (evals / "dup").mkdir(parents=True)
    first = FACTS.read_text().splitlines()[0]
    (tmp_path / "dup.jsonl").write_text(first + "\n" + first + "\n")
    (evals / "dup" / "dup.yaml").write_text(_task_yaml("dup", tmp_path / "dup.jsonl"))
    resolved = resolve_tasks(["dup"], evals, tmp_path / "work")
    with pytest.raises(GateError, match="item id 'capital-000' appears more than once"):
        evaluate_hf(resolved, base_model)


# ----------------------------------------------------------------------------------------------- pair


def _run(task: str, **metrics: dict[str, float]) -> TaskRun:
    return TaskRun(
        task=task,
        backend="hf",
        metrics=metrics,
        higher_is_better={m: True for m in metrics},
        aggregate={m: sum(v.values()) / len(v) for m, v in metrics.items()},
        n=max(len(v) for v in metrics.values()),
        wall_s=0.0,
    )


def test_pair_builds_the_decision_input() -> None:
    cand = [_run("t", acc={"a": 1.0, "b": 1.0})]
    base = [_run("t", acc={"a": 0.0, "b": 1.0})]
    (scores,) = pair(cand, base)
    assert scores.task == "t" and scores.metrics["acc"].baseline == {"a": 0.0, "b": 1.0}
    assert scores.metrics["acc"].merged is None


def test_pair_reports_missing_tasks_and_metrics() -> None:
    cand = [_run("t", acc={"a": 1.0}), _run("u", acc={"a": 1.0})]
    base = [_run("t", acc_norm={"a": 1.0}), _run("v", acc={"a": 1.0})]
    with pytest.raises(GateError) as caught:
        pair(cand, base)
    text = str(caught.value)
    assert "task 'v': scored for another model but not for the candidate" in text
    assert "task 'u': no baseline run" in text
    assert "task 't': the baseline run scores ['acc_norm'], the candidate ['acc']" in text


# ----------------------------------------------------------------------------------------------- vLLM


@pytest.fixture(scope="module")
def served_base(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    python = load_settings(cwd=REPO).serve_python
    if not python.exists():
        pytest.skip(f"no serving environment at {python}")
    spec = VllmSpec(model_dir=base_model.resolve(), served_model_name="tiny-base")
    with serve(spec, python=python, workdir=tmp_path_factory.mktemp("vllm")) as server:
        yield server


@pytest.mark.vllm
def test_vllm_scores_agree_with_hf(shipped: ResolvedTasks, base_model: Path, served_base: VllmServer) -> None:
    limit, url = 24, served_base.completions_url
    served = evaluate_server(
        shipped, completions_url=url, model_name="tiny-base", tokenizer_dir=base_model, limit=limit
    )
    via_chat = evaluate_server(
        shipped.select(["support-tickets"]),
        completions_url=url,
        chat_url=served_base.base_url + "/chat/completions",
        model_name="tiny-base",
        tokenizer_dir=base_model,
        limit=limit,
    )
    local = evaluate_hf(shipped, base_model, limit=limit)

    assert [r.backend for r in served] == ["local-completions", "local-completions"]
    assert via_chat[0].backend == "local-chat-completions"
    # The server applying the chat template sends the very prompt lm-eval renders with the local tokenizer.
    assert via_chat[0].outputs == served[0].outputs
    rows = {row["id"]: row for row in map(json.loads, TICKETS.read_text().splitlines())}
    assert all(json.loads(p) == rows[i]["messages"][:-1] for i, p in via_chat[0].prompts.items())
    assert served[0].prompts == local[0].prompts

    for vllm_run, hf_run in zip(served, local, strict=True):
        assert vllm_run.n == hf_run.n == limit
        for metric, items in vllm_run.metrics.items():
            assert list(items) == list(hf_run.metrics[metric])  # same ids, same order
            agree = sum(items[i] == hf_run.metrics[metric][i] for i in items)
            # Log-likelihoods agree to ~0.1 nat in bf16, so at most a near-tie flips. (With lm-eval's default
            # special tokens, hf scores "BOS text" and local-completions "text": several items differ.)
            assert agree >= limit - 1, (vllm_run.task, metric, agree)
    same_text = sum(served[0].outputs[i] == local[0].outputs[i] for i in served[0].outputs)
    assert same_text >= 0.75 * limit  # greedy bf16 decoding: the two round differently on near-ties
