"""MLflow model registry: versions, lineage tags, aliases. Only this module and tracking.py import mlflow."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lifecycle.errors import RegistryError
from lifecycle.registry.tracking import Tracker

SERVED_ARTIFACT = "served-model"


@dataclass(frozen=True)
class VersionRecord:
    name: str
    version: str
    source: str
    run_id: str | None
    tags: dict[str, str]
    aliases: tuple[str, ...]
    description: str


class Registry:
    """Registered models on the same store as the runs (sqlite in mlruns/, or an MLflow server)."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.client = tracker.client

    def ensure_model(self, name: str, description: str = "") -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name, description=description or None)
            except MlflowException as exc:
                # another run (a sweep of the same recipe) created it after we looked
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

    def register(
        self,
        name: str,
        run_id: str,
        model_dir: Path,
        tags: Mapping[str, str],
        description: str,
        alias: str,
    ) -> VersionRecord:
        """Upload the served artifact to the run, make it a version of `name` with lineage tags, set `alias`."""
        self.ensure_model(name)
        self.tracker.log_artifact(run_id, model_dir, SERVED_ARTIFACT)
        source = f"{self.tracker.get_run(run_id).artifact_uri.rstrip('/')}/{SERVED_ARTIFACT}"
        try:
            version = self.client.create_model_version(
                name, source=source, run_id=run_id, tags=dict(tags), description=description
            )
            self.client.set_registered_model_alias(name, alias, version.version)
        except Exception as exc:
            raise RegistryError(f"registering {name} from run {run_id} failed: {exc}") from None
        return self.get(name, str(version.version))

    def get(self, name: str, version: str) -> VersionRecord:
        v = self.client.get_model_version(name, version)
        return _record(v)

    def by_alias(self, name: str, alias: str) -> VersionRecord | None:
        """The version an alias points at, or None (no model of that name, or the alias is unset)."""
        from mlflow.exceptions import MlflowException

        try:
            return _record(self.client.get_model_version_by_alias(name, alias))
        except MlflowException:
            return None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def versions(self, name: str) -> list[VersionRecord]:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            return []
        return sorted((_record(v) for v in found), key=lambda r: int(r.version))

    def download(self, name: str, alias: str, target: Path) -> Path:
        """Fetch the artifact behind `name@alias` into `target` (a baseline to serve)."""
        version = self.by_alias(name, alias)
        if version is None or version.run_id is None:
            raise RegistryError(
                f"{name}@{alias}: no such version (or it has no run) at {self.tracker.tracking_uri}"
            )
        target.mkdir(parents=True, exist_ok=True)
        # through the client: a models:/ URI would be resolved against the default registry, not this one
        path = self.client.download_artifacts(version.run_id, SERVED_ARTIFACT, str(target))
        return Path(path)


def _record(v: object) -> VersionRecord:
    aliases = tuple(getattr(v, "aliases", ()) or ())
    return VersionRecord(
        name=str(getattr(v, "name", "")),
        version=str(getattr(v, "version", "")),
        source=str(getattr(v, "source", "")),
        run_id=getattr(v, "run_id", None),
        tags=dict(getattr(v, "tags", {}) or {}),
        aliases=aliases,
        description=str(getattr(v, "description", "") or ""),
    )
