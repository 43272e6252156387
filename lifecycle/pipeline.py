"""`lifecycle train` is the stages in order; each reads the previous stage's result from the run directory,
so any of them can be rerun on its own (`lifecycle quantize RUN`, `lifecycle gate RUN`, ...)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from lifecycle import interrupt
from lifecycle.errors import MissingResultError, UserInputError
from lifecycle.gate.stage import GateResult
from lifecycle.launch.checkpoints import latest_committed, step_of
from lifecycle.quantize.chain import ChainReport
from lifecycle.quantize.stage import QuantizeResult
from lifecycle.recipe.load import LoadedRecipe
from lifecycle.registry.stage import RegisteredVersion
from lifecycle.registry.tracking import Tracker
from lifecycle.runs import STAGES, RunDir, Stopped, TrainResult

if TYPE_CHECKING:
    from lifecycle.cli.context import Context

log = logging.getLogger(__name__)


def run_stages(run: RunDir, loaded: LoadedRecipe, ctx: Context, console: Console) -> bool:
    """Every stage in order; True when the run ended with a registered version, False when its gate failed."""
    from lifecycle.quantize import stage as quantize_stage
    from lifecycle.train import stage as train_stage

    tracker = ctx.tracker
    with recorded(run, tracker, finish=True):
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
    return gated.passed


@contextlib.contextmanager
def recorded(run: RunDir, tracker: Tracker, *, finish: bool) -> Iterator[None]:
    """Continue `run` and, however the work ends, end its MLflow run once: KILLED on a stop signal or Ctrl-C,
    FAILED on an error, FINISHED on success if `finish`. A stop or an error is also kept in the run directory
    (`stopped.json`), for `lifecycle runs` and `lifecycle train --resume`; continuing the run clears it. A
    refusal to start (bad input, an earlier stage's result missing) changes nothing."""
    mlflow_run = run.info().mlflow_run_id
    before = run.stopped()
    run.mark_stopped(None)
    if before is not None and mlflow_run:
        tracker.reopen_run(mlflow_run)  # KILLED or FAILED until now; it runs again
    try:
        yield
    except (UserInputError, MissingResultError):
        run.mark_stopped(before)  # refused before anything started: the run stays as it was
        if before is not None and mlflow_run:
            _end(tracker, mlflow_run, "KILLED" if before.reason == "interrupted" else "FAILED")
        raise
    except BaseException as exc:
        # the signal counts, not the exception that carries it out: cleanup on the way may raise another one
        signum = interrupt.received() or _signal_of(exc)
        stopped = _stopped(run, signum, exc)
        run.mark_stopped(stopped)
        if mlflow_run:
            _end(tracker, mlflow_run, "KILLED" if signum else "FAILED")
        if signum and interrupt.received():
            kept = _kept(run.info().run_id, stopped)
            if isinstance(exc, interrupt.Interrupted):
                exc.kept = kept
                raise
            raise interrupt.Interrupted(signum, kept) from exc
        raise
    if finish and mlflow_run:
        tracker.end_run(mlflow_run, "FINISHED")


def _signal_of(exc: BaseException) -> int | None:
    if isinstance(exc, interrupt.Interrupted):
        return exc.signum
    return signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None


def _stopped(run: RunDir, signum: int | None, exc: BaseException) -> Stopped:
    stage = next((s for s in STAGES if not run.has(s)), "done")
    checkpoint = latest_committed(run.train_dir / "checkpoints", verify=False) if stage == "train" else None
    return Stopped(
        reason="interrupted" if signum else "failed",
        stage=stage,
        time=dt.datetime.now().isoformat(timespec="seconds"),
        signal=interrupt.signal_name(signum) if signum else None,
        step=step_of(checkpoint) if checkpoint else None,
        error=None if signum else (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500],
    )


def _kept(run_id: str, stopped: Stopped) -> str:
    if stopped.step is not None:
        return f"run {run_id} kept at step {stopped.step}"
    if stopped.stage == "train":
        return f"run {run_id} kept (no checkpoint committed yet)"
    done = STAGES[: STAGES.index(stopped.stage)] if stopped.stage in STAGES else STAGES
    return f"run {run_id} kept with {', '.join(done)} done"


def _end(tracker: Tracker, mlflow_run: str, status: str) -> None:
    """End the MLflow run without hiding the error or the stop that got us here."""
    try:
        tracker.end_run(mlflow_run, status)
    except Exception as exc:
        log.warning("MLflow run %s could not be marked %s: %s", mlflow_run, status, exc)


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
