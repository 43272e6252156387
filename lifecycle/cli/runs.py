"""`lifecycle runs` and `lifecycle ui`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from lifecycle.cli.output import console

if TYPE_CHECKING:
    from lifecycle.runs import RunDir


def runs(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List run directories, newest first, with how far each got and how the last command on each ended."""
    from lifecycle.runs import STAGES, TrainResult, list_runs
    from lifecycle.settings import load_settings

    settings = load_settings()
    rows: list[dict[str, Any]] = []
    for run in list_runs(settings.runs_dir):
        info = run.info()
        stages = [s for s in STAGES if run.has(s)]
        trained = run.load("train", TrainResult) if run.has("train") else None
        stopped = run.stopped()
        rows.append(
            {
                "run_id": info.run_id,
                "recipe": info.recipe_name,
                "created": info.created,
                "status": stopped.reason if stopped else _status(run),
                "stopped": stopped.model_dump() if stopped else None,
                "stages": stages,
                "steps": trained.steps if trained else None,
                "eval_accuracy": trained.eval_accuracy if trained else None,
                "mlflow_run_id": info.mlflow_run_id,
                "path": str(run.path),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"runs in {settings.runs_dir}")
    # the run id begins with the recipe's name, and tells sweep runs apart by its tail: never cut it
    table.add_column("run", no_wrap=True)
    for col in ("created", "status", "reached", "steps", "held-out acc", "mlflow run"):
        table.add_column(col)
    for row in rows:
        acc = row["eval_accuracy"]
        table.add_row(
            row["run_id"],
            row["created"][:19].replace("T", " "),
            _status_text(row["status"], row["stopped"]),
            row["stages"][-1] if row["stages"] else "-",
            str(row["steps"] or "-"),
            "-" if acc is None else f"{acc:.3f}",
            (row["mlflow_run_id"] or "-")[:12],
        )
    console.print(table)


def _status(run: RunDir) -> str:
    """done | gate failed | incomplete: still running, or stopped with no chance to record it (SIGKILL, a crash)."""
    if run.has("register"):
        return "done"
    if run.has("gate") and not json.loads((run.results_dir / "gate.json").read_text())["verdict"]["passed"]:
        return "gate failed"  # complete: nothing to register
    return "incomplete"


def _status_text(status: str, stopped: dict[str, Any] | None) -> str:
    if not stopped:
        return status
    at = stopped["stage"] + (f" step {stopped['step']}" if stopped["step"] is not None else "")
    return f"{status} ({stopped['signal']}, {at})" if stopped["signal"] else f"{status} ({at})"


def ui(port: int = typer.Option(5000, help="Port for the MLflow UI.")) -> None:
    """Open the MLflow UI on this project's store (runs, registered versions, gate reports)."""
    import os
    import sys

    from lifecycle.settings import load_settings

    settings = load_settings()
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        settings.tracking_uri,
        "--default-artifact-root",
        settings.artifacts_dir.as_uri(),
        "--port",
        str(port),
    ]
    console.print(f"MLflow UI on http://127.0.0.1:{port} (store {settings.tracking_uri})")
    os.execv(sys.executable, argv)
