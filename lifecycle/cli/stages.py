"""`lifecycle quantize|gate|register RUN`: rerun one stage of an existing run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from lifecycle.cli.output import console
from lifecycle.errors import UserInputError

if TYPE_CHECKING:
    from lifecycle.cli.context import Context
    from lifecycle.runs import RunDir


def _open(run: str, discard: tuple[str, ...] = ()) -> tuple[Context, RunDir]:
    """The context and the run a stage command works on, with the named earlier results discarded."""
    from lifecycle.cli.context import load_context
    from lifecycle.runs import resolve_run

    ctx = load_context()
    run_dir = resolve_run(ctx.settings.runs_dir, run)
    for stage in discard:
        run_dir.discard(stage)
    return ctx, run_dir


def quantize(
    run: str = typer.Argument("latest", help="Run id, run folder, or 'latest'."),
    redo: bool = typer.Option(False, "--redo", help="Discard an earlier quantize and chain result first."),
) -> None:
    """Quantize a trained run's model (llmcompressor) and run the chain check through vLLM."""
    from lifecycle.pipeline import chain_table, quantize_line, recorded
    from lifecycle.quantize import stage as quantize_stage

    ctx, run_dir = _open(run, ("quantize", "chain") if redo else ())
    with recorded(run_dir, ctx.tracker, finish=False):
        console.print(quantize_line(quantize_stage.run(run_dir, ctx.tracker)))
        serve = ctx.serve_factory(run_dir.path / "engines")
        console.print(chain_table(quantize_stage.run_chain_check(run_dir, serve, ctx.tracker)))


def gate(
    run: str = typer.Argument("latest", help="Run id, run folder, or 'latest'."),
    redo: bool = typer.Option(False, "--redo", help="Discard an earlier gate result and evaluate again."),
) -> None:
    """Evaluate the served (quantized) artifact against the baseline with lm-eval and decide. Exit 1 if it fails."""
    from lifecycle.pipeline import recorded, run_gate

    ctx, run_dir = _open(run)
    if run_dir.has("register"):
        raise UserInputError(f"{run_dir.path}: already registered; a registered version's gate is final")
    if redo:
        run_dir.discard("gate")
    with recorded(run_dir, ctx.tracker, finish=False):
        passed = run_gate(run_dir, ctx, console).passed
    if not passed:
        raise typer.Exit(1)


def register(run: str = typer.Argument("latest", help="Run id, run folder, or 'latest'.")) -> None:
    """Register a run that passed its gate as a model version in MLflow (alias 'candidate')."""
    from lifecycle.pipeline import registered_line, run_register

    ctx, run_dir = _open(run)
    console.print(registered_line(run_register(run_dir, ctx)))
