"""Run directories and the typed results stages hand each other.

A run directory is self-contained: the resolved recipe, copies of its data, each stage's output folder and each
stage's result as JSON. Any stage can be rerun or resumed from the one before it by reading these results.

    <runs>/<run-id>/
      run.json               RunInfo: id, recipe name and hash, MLflow run id, created
      recipe.yaml            the recipe as validated (overrides applied, data paths pointing into data/)
      recipe.source.yaml     the file as the user wrote it
      data/                  train.jsonl, eval.jsonl (so the folder syncs to a cloud node as-is)
      train/                 the training worker's output: checkpoints/, metrics.jsonl, adapter/, model/
      results/<stage>.json   TrainResult, QuantizeResult, ChainReport, GateResult, RegisteredVersion
      stopped.json           Stopped: the last command on the run was interrupted or failed (gone once continued)
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from lifecycle.errors import MissingResultError, UserInputError
from lifecycle.manifest import write_json_atomic
from lifecycle.results import STAGES, Cost, DataStats, Frozen, RunInfo, Stopped, TrainResult

R = TypeVar("R", bound=BaseModel)

__all__ = ["STAGES", "Cost", "DataStats", "Frozen", "RunDir", "RunInfo", "Stopped", "TrainResult"]


def new_run_id(recipe_name: str, now: dt.datetime | None = None, token: str | None = None) -> str:
    """`<recipe>-<YYYYmmdd-HHMMSS>-<6 hex>`: a recipe's runs sort by start time, and the random tail keeps apart
    runs started in the same second (a sweep, a CI matrix, other machines sharing the store). Unique on one disk
    only once claimed: see `lifecycle.train.stage.prepare`."""
    now = now or dt.datetime.now()
    token = secrets.token_hex(3) if token is None else token
    return f"{recipe_name}-{now.strftime('%Y%m%d-%H%M%S')}-{token}"


def created_stamp(now: dt.datetime) -> str:
    """RunInfo.created: local time to the microsecond, so runs started in the same second still sort."""
    return now.isoformat(timespec="microseconds")


class RunDir:
    """A run directory on disk; the only place stage results are read from and written to."""

    def __init__(self, path: Path):
        self.path = path

    # layout ---------------------------------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        return self.path / "run.json"

    @property
    def recipe_path(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    @property
    def results_dir(self) -> Path:
        return self.path / "results"

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    # run info -------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.info_path.is_file()

    def info(self) -> RunInfo:
        if not self.exists():
            raise UserInputError(f"{self.path}: not a run directory (no run.json)")
        return RunInfo.model_validate_json(self.info_path.read_text())

    def write_info(self, info: RunInfo) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.info_path, info.model_dump(mode="json"))

    # how the last command on the run stopped ----------------------------------------------------------------
    def stopped(self) -> Stopped | None:
        """Set when a command was interrupted or failed; None while running, once finished, or after a stop that
        left no chance to record it (SIGKILL, power loss)."""
        path = self.path / "stopped.json"
        return Stopped.model_validate_json(path.read_text()) if path.is_file() else None

    def mark_stopped(self, stopped: Stopped | None) -> None:
        """Record how a command stopped; None clears the record when a command continues the run."""
        if stopped is None:
            (self.path / "stopped.json").unlink(missing_ok=True)
        else:
            write_json_atomic(self.path / "stopped.json", stopped.model_dump(mode="json"))

    # stage results --------------------------------------------------------------------------------------
    def save(self, stage: str, result: BaseModel) -> Path:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{stage}.json"
        write_json_atomic(path, result.model_dump(mode="json"))
        return path

    def has(self, stage: str) -> bool:
        return (self.results_dir / f"{stage}.json").is_file()

    def load(self, stage: str, model: type[R]) -> R:
        path = self.results_dir / f"{stage}.json"
        if not path.is_file():
            raise MissingResultError(
                f"{self.path}: no {stage} result ({path.name} missing): run the {stage} stage first"
            )
        return model.model_validate_json(path.read_text())

    def discard(self, stage: str) -> None:
        (self.results_dir / f"{stage}.json").unlink(missing_ok=True)
        shutil.rmtree(self.stage_dir(stage), ignore_errors=True)


def list_runs(root: Path) -> list[RunDir]:
    """Run directories under `root`, newest first."""
    if not root.is_dir():
        return []
    runs = [(RunDir(p), RunDir(p).info()) for p in root.iterdir() if (p / "run.json").is_file()]
    # created strings of older runs stop at the second and sort just before this format's; the id breaks ties
    runs.sort(key=lambda pair: (pair[1].created, pair[1].run_id), reverse=True)
    return [run for run, _ in runs]


def resolve_run(root: Path, ref: str) -> RunDir:
    """A run given as a path, a run id under `root`, or 'latest'."""
    if ref == "latest":
        runs = list_runs(root)
        if not runs:
            raise UserInputError(f"no runs under {root}")
        return runs[0]
    for candidate in (Path(ref), root / ref):
        if (candidate / "run.json").is_file():
            return RunDir(candidate)
    raise UserInputError(f"{ref}: no such run (looked for a folder with run.json, and for {root / ref})")
