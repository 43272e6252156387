"""MLflow runs: the one place that imports mlflow for experiment tracking.

With no MLFLOW_TRACKING_URI set the store is sqlite inside `mlruns/` with artifacts beside it; a team points the
same code at an `mlflow server` (Postgres behind it) by setting the URI.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.errors import RegistryError

MAX_PARAM_LEN = 6000
BATCH = 100


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str
    status: str
    start_time: int
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifact_uri: str


class Tracker:
    """Thin client over MlflowClient with explicit run ids (no global active run)."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None):
        from mlflow.tracking import MlflowClient

        # its INFO lines ("Creating initial MLflow database tables...") are not the platform's account of a stage
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        db = _sqlite_file(tracking_uri)
        if db is None:
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            return
        db.parent.mkdir(parents=True, exist_ok=True)
        # The first time a process opens a sqlite store, MLflow creates any missing tables, runs the alembic
        # migrations and inserts the Default experiment, with no lock: processes opening a fresh store together
        # (a sweep, a CI matrix) break each other's set-up. Opening it under a file lock makes one of them set
        # it up and the others find it done. The stores are cached per process, so later Trackers do no set-up.
        with _file_lock(db.with_name(db.name + ".lock")):
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)  # tracking store
            self.client.search_registered_models(max_results=1)  # the registry store, otherwise opened lazily

    def experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if self.artifact_root is not None and not self.tracking_uri.startswith(("http://", "https://")):
            location = (self.artifact_root / name).resolve().as_uri()
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = self.client.get_experiment_by_name(name)  # another process created it after we looked
        if found is None:
            raise RegistryError(
                f"MLflow experiment {name!r} at {self.tracking_uri}: exists, yet cannot be read"
            )
        return str(found.experiment_id)

    def start_run(self, experiment: str, run_name: str, tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=dict(tags))
        return str(run.info.run_id)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        items = [Param(k, _param_str(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, params=items[i : i + BATCH])

    def log_metrics(self, run_id: str, rows: Iterable[tuple[str, float, int]]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v, step in rows if math.isfinite(float(v))]
        for i in range(0, len(items), BATCH * 10):
            self.client.log_batch(run_id, metrics=items[i : i + BATCH * 10])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, _param_str(v)) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, tags=items[i : i + BATCH])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def reopen_run(self, run_id: str) -> None:
        """Mark an ended run RUNNING again: a stopped run that is being continued."""
        self.client.update_run(run_id, status="RUNNING")

    def get_run(self, run_id: str) -> RunRecord:
        try:
            run = self.client.get_run(run_id)
        except Exception as exc:
            raise RegistryError(f"MLflow run {run_id} not found at {self.tracking_uri}: {exc}") from None
        return RunRecord(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            status=run.info.status,
            start_time=run.info.start_time or 0,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            tags=dict(run.data.tags),
            artifact_uri=run.info.artifact_uri or "",
        )

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        return [a.path for a in self.client.list_artifacts(run_id, path)]


def _sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a sqlite tracking URI (sqlite:///relative or sqlite:////absolute); None otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on this machine (and NFS clients, where flock maps to NFS locks)."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become JSON."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def _param_str(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_LEN]
