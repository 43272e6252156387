"""`lifecycle runs` and `lifecycle ui`."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from lifecycle.cli.output import console


def runs(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List run directories, newest first, with how far each got."""
    from lifecycle.runs import TrainResult, list_runs
    from lifecycle.settings import load_settings

    settings = load_settings()
    rows: list[dict[str, Any]] = []
    for run in list_runs(settings.runs_dir):
        info = run.info()
        stages = [s for s in ("train", "quantize", "chain", "gate", "register") if run.has(s)]
        trained = run.load("train", TrainResult) if run.has("train") else None
        rows.append(
            {
                "run_id": info.run_id,
                "recipe": info.recipe_name,
                "created": info.created,
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
    for col in ("run", "recipe", "created", "stages done", "steps", "held-out acc", "mlflow run"):
        table.add_column(col)
    for row in rows:
        acc = row["eval_accuracy"]
        table.add_row(
            row["run_id"],
            row["recipe"],
            row["created"],
            ", ".join(row["stages"]) or "-",
            str(row["steps"] or "-"),
            "-" if acc is None else f"{acc:.3f}",
            (row["mlflow_run_id"] or "-")[:12],
        )
    console.print(table)


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
