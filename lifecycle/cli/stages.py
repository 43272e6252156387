"""`lifecycle quantize|gate|register RUN`: rerun one stage of an existing run (lifecycle.api does the work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from lifecycle.cli.output import console
from lifecycle.errors import UserInputError

if TYPE_CHECKING:
    from lifecycle.api import Lifecycle
    from lifecycle.runs import RunDir

RUN_ARG = typer.Argument("latest", help="Run id, run folder, or 'latest'.")


def _open(run: str) -> tuple[Lifecycle, RunDir]:
    from lifecycle.cli.context import load_context

    api = load_context().api
    return api, api.open(run)


def quantize(
    run: str = RUN_ARG,
    redo: bool = typer.Option(
        False, "--redo", help="Discard an earlier quantize, chain and gate result first (a new artifact)."
    ),
) -> None:
    """Quantize a trained run's model (llmcompressor) and run the chain check through vLLM."""
    from lifecycle.cli.render import StageProgress

    api, run_dir = _open(run)
    if redo:
        _refuse_if_registered(run_dir, "quantize --redo")
        for stage in ("quantize", "chain", "gate"):
            run_dir.discard(stage)
    with StageProgress(console) as progress:
        progress("quantize", None)
        progress("quantize", api.quantize(run_dir))
        progress("chain", None)
        progress("chain", api.check(run_dir))


def gate(
    run: str = RUN_ARG,
    redo: bool = typer.Option(False, "--redo", help="Discard an earlier gate result and evaluate again."),
) -> None:
    """Evaluate the served (quantized) artifact against the baseline with lm-eval and decide. Exit 1 if it fails."""
    from lifecycle.cli.render import StageProgress

    api, run_dir = _open(run)
    _refuse_if_registered(run_dir, "gate")
    if redo:
        run_dir.discard("gate")
    with StageProgress(console) as progress:
        progress("gate", None)
        result = api.gate(run_dir)
        progress("gate", result)
    if not result.passed:
        raise typer.Exit(1)


def register(run: str = RUN_ARG) -> None:
    """Register a run that passed its gate as a model version in MLflow (alias 'candidate')."""
    from lifecycle.cli.render import registered_line

    api, run_dir = _open(run)
    console.print(registered_line(api.register(run_dir)))


def _refuse_if_registered(run_dir: RunDir, what: str) -> None:
    if run_dir.has("register"):
        raise UserInputError(f"{run_dir.path}: already registered; a registered version's {what} is final")
