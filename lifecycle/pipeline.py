"""`lifecycle train` is the stages in order; each reads the previous stage's result from the run directory,
so any of them can be rerun on its own (`lifecycle quantize RUN`, `lifecycle gate RUN`, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from lifecycle.gate.stage import GateResult
from lifecycle.quantize.chain import ChainReport
from lifecycle.quantize.stage import QuantizeResult
from lifecycle.recipe.load import LoadedRecipe
from lifecycle.registry.stage import RegisteredVersion
from lifecycle.runs import RunDir, TrainResult

if TYPE_CHECKING:
    from lifecycle.cli.context import Context


def run_stages(run: RunDir, loaded: LoadedRecipe, ctx: Context, console: Console) -> bool:
    """Every stage in order; True when the run ended with a registered version, False when its gate failed."""
    from lifecycle.quantize import stage as quantize_stage
    from lifecycle.train import stage as train_stage

    info = run.info()
    tracker = ctx.tracker
    try:
        trained = train_stage.run(run, ctx.launcher(loaded), tracker)  # type: ignore[arg-type]
        console.print(train_table(trained))
        with console.status(f"quantizing ({loaded.recipe.quantize.scheme})"):
            quantized = quantize_stage.run(run, tracker)
        console.print(quantize_line(quantized))
        with console.status("chain check: serving base+adapter, merged and quantized through vLLM"):
            chain = quantize_stage.run_chain_check(run, ctx.serve_factory(run.path / "engines"), tracker)
        console.print(chain_table(chain))
        gated = run_gate(run, ctx, console)
        if gated.passed:
            registered = run_register(run, ctx)
            console.print(registered_line(registered))
        else:
            console.print(f"[bold red]gate failed[/]: nothing registered. Report: {gated.report_md}")
    except BaseException:
        if info.mlflow_run_id:
            tracker.end_run(info.mlflow_run_id, "FAILED")
        raise
    if info.mlflow_run_id:
        tracker.end_run(info.mlflow_run_id, "FINISHED")
    return gated.passed


def train_table(result: TrainResult) -> Table:
    table = Table(title="training", show_header=False)
    rows: list[tuple[str, Any]] = [
        ("method", result.method),
        (
            "steps",
            f"{result.steps}"
            + (f" (resumed at {result.resumed_from_step})" if result.resumed_from_step else ""),
        ),
        ("final loss", _fmt(result.final_loss)),
        ("held-out accuracy", f"{_fmt(result.base_eval_accuracy)} (base) -> {_fmt(result.eval_accuracy)}"),
        ("model", result.model_dir),
        ("manifest", result.manifest_digest[:16]),
        ("wall time", f"{result.wall_s:.1f} s"),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def run_gate(run: RunDir, ctx: Context, console: Console) -> GateResult:
    from lifecycle.gate import stage as gate_stage
    from lifecycle.gate.report import render_rich

    with console.status("gate: serving candidate, merged and baseline through vLLM, evaluating with lm-eval"):
        result = gate_stage.run(
            run,
            serve=ctx.serve_factory(run.path / "engines"),
            evals_dir=ctx.evals_dir,
            find_production=ctx.find_production,
            tracker=ctx.tracker,
        )
    console.print(render_rich(result.verdict))
    console.print(f"gate report: {result.report_md} and {result.report_png}")
    return result


def run_register(run: RunDir, ctx: Context) -> RegisteredVersion:
    from lifecycle.provenance import git_commit
    from lifecycle.registry import stage as register_stage

    return register_stage.run(run, ctx.registry, git_commit(ctx.project_dir), ctx.engine_version())


def registered_line(v: RegisteredVersion) -> str:
    return (
        f"registered [bold]{v.name}[/] version [bold]{v.version}[/] (alias '{v.alias}') from {v.source}\n"
        "see it in the registry UI: make ui  (or: lifecycle ui)"
    )


def quantize_line(result: QuantizeResult) -> str:
    if result.scheme == "none":
        return "quantize: scheme 'none', serving the merged model as is"
    return (
        f"quantized [bold]{result.scheme}[/] in {result.wall_s:.1f} s: {result.bytes_before / 1e6:.1f} MB -> "
        f"{result.bytes_after / 1e6:.1f} MB, config {result.config_sha256[:12]}"
        + (f", calibrated on {len(result.calibration_ids)} training rows" if result.calibration_ids else "")
    )


def chain_table(report: ChainReport) -> Table:
    table = Table(title=f"chain check ({report.n_prompts} eval prompts, greedy)")
    for col in ("link", "vs", "agreement", "mean |Δ logprob|", "max |Δ logprob|"):
        table.add_column(col)
    for p in report.pairs:
        table.add_row(
            p.right,
            p.left,
            f"{p.agreement:.0%}",
            f"{p.mean_abs_logprob_drift:.4f}",
            f"{p.max_abs_logprob_drift:.4f}",
        )
    if report.samples:
        last = list(report.samples[0])[-1]
        table.caption = f"sample answer from the served {last} model: {report.samples[0][last]!r}"
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
