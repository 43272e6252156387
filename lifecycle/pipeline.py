"""`lifecycle train` is the stages in order; each reads the previous stage's result from the run directory,
so any of them can be rerun on its own (`lifecycle quantize RUN`, `lifecycle gate RUN`, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from lifecycle.recipe.load import LoadedRecipe
from lifecycle.runs import RunDir, TrainResult

if TYPE_CHECKING:
    from lifecycle.cli.context import Context


def run_stages(run: RunDir, loaded: LoadedRecipe, ctx: Context, console: Console) -> None:
    from lifecycle.train import stage as train_stage

    info = run.info()
    trained = train_stage.run(run, ctx.launcher(loaded), ctx.tracker)  # type: ignore[arg-type]
    console.print(train_table(trained))
    if info.mlflow_run_id:
        ctx.tracker.end_run(info.mlflow_run_id, "FINISHED")


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


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
