"""Chain check: base + adapter ≡ merged ≡ quantized, through the engine that will serve them.

On a fixed set of eval prompts, greedy outputs and token log-probs are collected from (a) the base model with
the LoRA adapter, (b) the merged model and (c) the quantized model. Merged disagreeing with adapter beyond the
recipe's tolerance is a merge bug (a dtype slip, a wrong scaling), not quantization noise, and stops the run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from lifecycle.engines.base import Completion, CompletionEngine
from lifecycle.errors import StageError
from lifecycle.recipe.schema import ChainCheckSpec
from lifecycle.runs import Frozen

STAGE = "chain"
ADAPTER_NAME = "adapter"


class PairStats(Frozen):
    """How two links of the chain compare on the same prompts."""

    left: str
    right: str
    n: int
    agreement: float  # fraction of prompts with identical greedy text
    mean_abs_logprob_drift: float  # over the shared prefix of generated tokens
    max_abs_logprob_drift: float
    disagreeing: list[int]  # prompt indexes whose outputs differ


class ChainReport(Frozen):
    n_prompts: int
    max_tokens: int
    pairs: list[PairStats]
    samples: list[dict[str, str]]  # prompt and each link's answer, for the first few prompts
    passed: bool
    problems: list[str]


def compare(left: str, right: str, a: Sequence[Completion], b: Sequence[Completion]) -> PairStats:
    """Agreement of greedy texts and drift of token log-probs where the two generated the same tokens."""
    if len(a) != len(b):
        raise ValueError(f"{left} answered {len(a)} prompts and {right} {len(b)}")
    drifts: list[float] = []
    disagreeing = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.text != y.text:
            disagreeing.append(i)
        # token ids when the engine returns them: two ids can decode to the same text
        ids_x, ids_y = (x.token_ids, y.token_ids) if x.token_ids and y.token_ids else (x.tokens, y.tokens)
        for tx, ty, lx, ly in zip(ids_x, ids_y, x.token_logprobs, y.token_logprobs, strict=False):
            if tx != ty:
                break  # past the first divergence the two are conditioned on different text
            drifts.append(abs(lx - ly))
    n = len(a)
    return PairStats(
        left=left,
        right=right,
        n=n,
        agreement=(n - len(disagreeing)) / n if n else 1.0,
        mean_abs_logprob_drift=statistics.fmean(drifts) if drifts else 0.0,
        max_abs_logprob_drift=max(drifts, default=0.0),
        disagreeing=disagreeing,
    )


def judge(pairs: list[PairStats], spec: ChainCheckSpec) -> list[str]:
    """Problems that fail the run (pure). Merged vs adapter is held to the merge tolerance; quantized vs merged
    to the quantization tolerance (the gate measures quality; this catches a broken artifact)."""
    problems = []
    for pair in pairs:
        disagreement = 1.0 - pair.agreement
        if pair.left == "adapter" and pair.right == "merged" and disagreement > spec.max_merge_disagreement:
            problems.append(
                f"merged model disagrees with base+adapter on {disagreement:.0%} of {pair.n} prompts "
                f"(tolerance {spec.max_merge_disagreement:.0%}; mean log-prob drift "
                f"{pair.mean_abs_logprob_drift:.3f}): the merge is wrong (dtype or scaling), not quantization noise"
            )
        if pair.left == "merged" and pair.right == "quantized" and disagreement > spec.max_quant_disagreement:
            problems.append(
                f"quantized model disagrees with the merged model on {disagreement:.0%} of {pair.n} prompts "
                f"(tolerance {spec.max_quant_disagreement:.0%})"
            )
    return problems


Serve = Callable[[Path, dict[str, Path]], AbstractContextManager[CompletionEngine]]


def run_chain(
    prompts: list[str],
    spec: ChainCheckSpec,
    *,
    serve: Serve,
    base_dir: Path,
    adapter_dir: Path | None,
    merged_dir: Path,
    quantized_dir: Path | None,
) -> ChainReport:
    """Serve each link in turn (one server at a time) and compare neighbours. `serve(model_dir, loras)` starts
    an engine and stops it on exit."""
    outputs: dict[str, list[Completion]] = {}
    if adapter_dir is not None:
        with serve(base_dir, {ADAPTER_NAME: adapter_dir}) as engine:
            outputs["adapter"] = _greedy(engine, prompts, ADAPTER_NAME, spec.max_tokens)
    with serve(merged_dir, {}) as engine:
        outputs["merged"] = _greedy(engine, prompts, _base_name(engine), spec.max_tokens)
    if quantized_dir is not None:
        with serve(quantized_dir, {}) as engine:
            outputs["quantized"] = _greedy(engine, prompts, _base_name(engine), spec.max_tokens)
    links = list(outputs)
    pairs = [
        compare(left, right, outputs[left], outputs[right])
        for left, right in zip(links, links[1:], strict=False)
    ]
    problems = judge(pairs, spec)
    samples = [
        {"prompt": prompts[i], **{link: outputs[link][i].text for link in links}}
        for i in range(min(5, len(prompts)))
    ]
    return ChainReport(
        n_prompts=len(prompts),
        max_tokens=spec.max_tokens,
        pairs=pairs,
        samples=samples,
        passed=not problems,
        problems=problems,
    )


def _greedy(engine: CompletionEngine, prompts: list[str], model: str, max_tokens: int) -> list[Completion]:
    return engine.complete(prompts, model=model, max_tokens=max_tokens, temperature=0.0, logprobs=0)


def _base_name(engine: CompletionEngine) -> str:
    names = engine.models()
    if not names:
        raise StageError("the engine serves no model")
    return names[0]


def render_markdown(report: ChainReport) -> str:
    lines = [
        f"## Chain check: {'PASSED' if report.passed else 'FAILED'}",
        "",
        f"{report.n_prompts} eval prompts, greedy, up to {report.max_tokens} tokens.",
        "",
        "| link | vs | agreement | mean abs Δ log-prob | max abs Δ log-prob |",
        "|---|---|---|---|---|",
    ]
    for p in report.pairs:
        lines.append(
            f"| {p.right} | {p.left} | {p.agreement:.1%} | {p.mean_abs_logprob_drift:.4f} | "
            f"{p.max_abs_logprob_drift:.4f} |"
        )
    lines += ["", *[f"- {problem}" for problem in report.problems]]
    return "\n".join(lines) + "\n"
