"""`lifecycle quantize|gate|register RUN`: rerun one stage of an existing run."""

from __future__ import annotations

import typer

from lifecycle.errors import UserInputError


def quantize(run: str = typer.Argument("latest", help="Run id, run folder, or 'latest'.")) -> None:
    """Quantize a trained run's model (llmcompressor) and run the chain check."""
    raise UserInputError("the quantize stage is not part of this version yet")


def gate(run: str = typer.Argument("latest", help="Run id, run folder, or 'latest'.")) -> None:
    """Evaluate the served artifact against the baseline and decide."""
    raise UserInputError("the gate stage is not part of this version yet")


def register(run: str = typer.Argument("latest", help="Run id, run folder, or 'latest'.")) -> None:
    """Register a run that passed its gate as a model version in MLflow."""
    raise UserInputError("the register stage is not part of this version yet")
