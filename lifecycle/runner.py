"""How every stage runs: skip it when its result is saved, else compute, save and record it; and one place that
ends a run's MLflow run, exactly once, however the command ends.

A stage is a small object (`Stage`): its name, its result type, `compute` (the work), `reuse` (check that what a
saved result points at still holds, e.g. the weights still match their manifest) and `record` (to MLflow). The
pipeline is a list of them (`lifecycle.api`); `run_stage` is the only caller of all three.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from pydantic import BaseModel

from lifecycle import interrupt
from lifecycle.errors import MissingResultError, UserInputError
from lifecycle.recipe.load import LoadedRecipe, load_recipe
from lifecycle.results import STAGES, GateResult, RunInfo, Stopped
from lifecycle.runs import RunDir

if TYPE_CHECKING:
    from lifecycle.recipe.schema import Recipe
    from lifecycle.registry.tracking import Tracker

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class OpenRun:
    """A run directory with its recipe parsed once for the whole command, and where to record (None: nowhere)."""

    dir: RunDir
    loaded: LoadedRecipe
    info: RunInfo
    tracker: Tracker | None

    @classmethod
    def open(cls, run_dir: RunDir, tracker: Tracker | None) -> OpenRun:
        return cls(dir=run_dir, loaded=load_recipe(run_dir.recipe_path), info=run_dir.info(), tracker=tracker)

    @property
    def recipe(self) -> Recipe:
        return self.loaded.recipe

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def mlflow_run_id(self) -> str | None:
        return self.info.mlflow_run_id if self.tracker is not None else None


class Stage(Protocol[R]):
    @property
    def name(self) -> str:
        """The stage's name: its result is `results/<name>.json`."""
        ...

    @property
    def result(self) -> type[R]:
        """The type of its result."""
        ...

    def compute(self, run: OpenRun) -> R:
        """Do the stage's work from the earlier stages' results; return what it produced (not yet saved)."""
        ...

    def reuse(self, run: OpenRun, done: R) -> R:
        """A saved result, checked before a later stage builds on it; raise if what it points at changed."""
        ...

    def record(self, run: OpenRun, result: R) -> None:
        """Log the result on the run's MLflow run (called only when there is one)."""
        ...


def run_stage(stage: Stage[R], run: OpenRun) -> R:
    """The stage's saved result, checked, or a new one: computed, saved in the run directory, then recorded."""
    if run.dir.has(stage.name):
        return stage.reuse(run, run.dir.load(stage.name, stage.result))
    result = stage.compute(run)
    run.dir.save(stage.name, result)
    if run.mlflow_run_id is not None:
        stage.record(run, result)
    return result


def is_complete(run_dir: RunDir) -> bool:
    """Nothing is left to do: registered, or the gate decided against it (a failed gate is final)."""
    if run_dir.has("register"):
        return True
    return run_dir.has("gate") and not run_dir.load("gate", GateResult).passed


@contextlib.contextmanager
def session(run_dir: RunDir, tracker: Tracker | None) -> Iterator[None]:
    """Continue `run_dir` and, however the work ends, end its MLflow run once: KILLED on a stop signal or
    Ctrl-C, FAILED on an error, FINISHED when the run is complete (registered, or its gate failed); a stage
    command that leaves work to do leaves it RUNNING. A stop or an error is also kept in the run directory
    (`stopped.json`) for `lifecycle runs` and `lifecycle train --resume`; continuing clears it. A refusal to
    start (bad input, an earlier stage's result missing) changes nothing."""
    info = run_dir.info()
    mlflow_run = info.mlflow_run_id if tracker is not None else None
    before = run_dir.stopped()
    run_dir.mark_stopped(None)
    if before is not None and mlflow_run and tracker is not None:
        tracker.reopen_run(mlflow_run)  # KILLED or FAILED until now; it runs again
    try:
        yield
    except (UserInputError, MissingResultError):
        run_dir.mark_stopped(before)  # refused before anything started: the run stays as it was
        if before is not None and mlflow_run and tracker is not None:
            end_mlflow_run(tracker, mlflow_run, "KILLED" if before.reason == "interrupted" else "FAILED")
        raise
    except BaseException as exc:
        # the signal counts, not the exception that carries it out: cleanup on the way may raise another one
        signum = interrupt.received() or _signal_of(exc)
        stopped = _stopped(run_dir, signum, exc)
        run_dir.mark_stopped(stopped)
        if mlflow_run and tracker is not None:
            end_mlflow_run(tracker, mlflow_run, "KILLED" if signum else "FAILED")
        if signum and interrupt.received():
            kept = _kept(info.run_id, stopped)
            if isinstance(exc, interrupt.Interrupted):
                exc.kept = kept
                raise
            raise interrupt.Interrupted(signum, kept) from exc
        raise
    if mlflow_run and tracker is not None and is_complete(run_dir):
        end_mlflow_run(tracker, mlflow_run, "FINISHED")


def end_mlflow_run(tracker: Tracker, mlflow_run: str, status: str) -> None:
    """End the MLflow run without hiding the error or the stop that got us here."""
    try:
        tracker.end_run(mlflow_run, status)
    except Exception as exc:
        log.warning("MLflow run %s could not be marked %s: %s", mlflow_run, status, exc)


def _signal_of(exc: BaseException) -> int | None:
    if isinstance(exc, interrupt.Interrupted):
        return exc.signum
    return signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None


def _stopped(run_dir: RunDir, signum: int | None, exc: BaseException) -> Stopped:
    from lifecycle.launch.checkpoints import latest_committed, step_of

    stage = next((s for s in STAGES if not run_dir.has(s)), "done")
    checkpoint = (
        latest_committed(run_dir.train_dir / "checkpoints", verify=False) if stage == "train" else None
    )
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
