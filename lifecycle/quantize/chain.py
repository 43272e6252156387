"""Chain check: base + adapter ≡ merged ≡ quantized, through the engine that will serve them.

On a fixed set of eval prompts, greedy outputs and token log-probs are collected from (a) the base model with
the LoRA adapter, (b) the merged model and (c) the quantized model. Merged disagreeing with adapter beyond the
recipe's tolerance is a merge bug (a dtype slip, a wrong scaling), not quantization noise, and stops the run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lifecycle import measure
from lifecycle.engines.base import Completion
from lifecycle.errors import StageError
from lifecycle.measure import GateNeeds, Serve
from lifecycle.recipe.schema import ChainCheckSpec
from lifecycle.results import ChainReport, PairStats, QuantizeResult
from lifecycle.runner import OpenRun

STAGE = "chain"


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


def chain_report(
    prompts: list[str],
    targets: list[str | None],
    links: dict[str, list[Completion]],
    spec: ChainCheckSpec,
) -> ChainReport:
    """Compare neighbouring links on the first `spec.prompts` prompts and judge them (pure); held-out accuracy
    of every link, 'base' included, on all of them."""
    n = min(spec.prompts, len(prompts))
    chain = [link for link in ("adapter", "merged", "quantized") if link in links]
    pairs = [
        compare(left, right, links[left][:n], links[right][:n])
        for left, right in zip(chain, chain[1:], strict=False)
    ]
    problems = judge(pairs, spec)
    samples = [
        {"prompt": prompts[i], **{link: links[link][i].text for link in chain}} for i in range(min(5, n))
    ]
    return ChainReport(
        n_prompts=n,
        max_tokens=spec.max_tokens,
        pairs=pairs,
        samples=samples,
        passed=not problems,
        problems=problems,
        accuracy={link: accuracy(answers, targets) for link, answers in links.items()},
    )


@dataclass(frozen=True)
class ChainCheck:
    """base+adapter == merged == quantized on held-out prompts, through the engine that will serve them.
    `gate` (the gate's questions) makes the same servers answer the gate too: each artifact is served once."""

    serve: Serve
    gate: Callable[[OpenRun], GateNeeds] | None = None
    name: str = STAGE
    result: type[ChainReport] = ChainReport

    def compute(self, run: OpenRun) -> ChainReport:
        from lifecycle.quantize.stage import Quantize
        from lifecycle.train.stage import require_trained

        trained = require_trained(run.dir)
        quantized = Quantize().reuse(run, run.dir.load("quantize", QuantizeResult))
        spec = run.recipe.quantize.chain_check
        gate = self.gate(run) if self.gate is not None else None
        held_out = measure.eval_prompts(run, Path(trained.model_dir))
        n = min(spec.prompts, len(held_out.prompts))

        def stop_on_merge_bug(links: dict[str, list[Completion]]) -> None:
            if "adapter" in links and "merged" in links:
                pair = compare("adapter", "merged", links["adapter"][:n], links["merged"][:n])
                problems = judge([pair], spec)
                if problems:
                    raise StageError("chain check failed:\n  " + "\n  ".join(problems))

        servers = measure.plan(
            trained,
            quantized,
            chain=True,
            baseline=gate.baseline if gate else None,
            scores_prompts=gate.scores_prompts if gate else False,
        )
        links = measure.serve_and_ask(
            run, self.serve, servers, held_out, spec.max_tokens, gate, after_server=stop_on_merge_bug
        )
        report = chain_report(held_out.prompts, held_out.targets, links, spec)
        out = run.dir.stage_dir(STAGE)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(render_markdown(report))
        return report

    def reuse(self, run: OpenRun, done: ChainReport) -> ChainReport:
        return done

    def record(self, run: OpenRun, result: ChainReport) -> None:
        assert run.tracker is not None and run.mlflow_run_id is not None
        run.tracker.log_text(run.mlflow_run_id, render_markdown(result), "chain/report.md")
        rows = [(f"chain.{p.right}_vs_{p.left}.agreement", p.agreement, 0) for p in result.pairs]
        rows += [
            (f"chain.{p.right}_vs_{p.left}.mean_logprob_drift", p.mean_abs_logprob_drift, 0)
            for p in result.pairs
        ]
        rows += [
            (f"chain.{link}.accuracy", acc, 0) for link, acc in result.accuracy.items() if acc is not None
        ]
        run.tracker.log_metrics(run.mlflow_run_id, rows)


def require_passed(report: ChainReport) -> ChainReport:
    if not report.passed:
        raise StageError("chain check failed:\n  " + "\n  ".join(report.problems))
    return report


def accuracy(answers: list[Completion], targets: list[str | None]) -> float | None:
    """Exact match of greedy answers with their targets (stripped), over rows that have one."""
    scored = [(a.text.strip(), t.strip()) for a, t in zip(answers, targets, strict=False) if t is not None]
    return sum(a == t for a, t in scored) / len(scored) if scored else None


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
    if report.accuracy:
        lines += [
            "",
            "Held-out exact match: "
            + ", ".join(f"{link} {acc:.3f}" for link, acc in report.accuracy.items() if acc is not None),
        ]
    lines += ["", *[f"- {problem}" for problem in report.problems]]
    return "\n".join(lines) + "\n"
