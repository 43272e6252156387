"""MLflow model registry: versions, lineage tags, aliases. Only this module and tracking.py import mlflow."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lifecycle.errors import RegistryError
from lifecycle.registry.tracking import Tracker

SERVED_ARTIFACT = "served-model"
ADAPTER_ARTIFACT = "served-adapter"  # a LoRA run's adapter, registered as its own version
_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


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
        artifact_path: str = SERVED_ARTIFACT,
    ) -> VersionRecord:
        """Upload the served artifact to the run (under `artifact_path`), make it a version of `name` with
        lineage tags, set `alias`."""
        self.ensure_model(name)
        self.tracker.log_artifact(run_id, model_dir, artifact_path)
        source = f"{self.tracker.get_run(run_id).artifact_uri.rstrip('/')}/{artifact_path}"
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

    def find(self, name: str, version: str) -> VersionRecord | None:
        """The version, or None when the model or the version does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self.get(name, version)
        except MlflowException as exc:
            if exc.error_code in _ABSENT:
                return None
            raise RegistryError(f"{name} v{version} at {self.tracker.tracking_uri}: {exc}") from None

    def by_alias(self, name: str, alias: str) -> VersionRecord | None:
        """The version an alias points at, or None (no model of that name, or the alias is unset)."""
        from mlflow.exceptions import MlflowException

        try:
            return _record(self.client.get_model_version_by_alias(name, alias))
        except MlflowException:
            return None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove `alias` from `name`; nothing to do when it is not set."""
        if alias in self.aliases(name):
            self.client.delete_registered_model_alias(name, alias)

    def aliases(self, name: str) -> dict[str, str]:
        """alias -> version for the model `name`; empty when there is no such model."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code in _ABSENT:
                return {}
            raise RegistryError(f"{name} at {self.tracker.tracking_uri}: {exc}") from None
        return {str(alias): str(version) for alias, version in (model.aliases or {}).items()}

    def all_aliases(self) -> dict[str, dict[str, str]]:
        """model name -> (alias -> version), for every registered model that has an alias."""
        found: dict[str, dict[str, str]] = {}
        token = None
        while True:
            page = self.client.search_registered_models(max_results=1000, page_token=token)
            for model in page:
                if model.aliases:
                    found[str(model.name)] = {str(a): str(v) for a, v in model.aliases.items()}
            token = page.token
            if not token:
                return found

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, str | None]) -> None:
        """Set each tag on the version; a None value removes the tag (when it is there)."""
        present = self.get(name, version).tags
        for key, value in tags.items():
            if value is not None:
                self.client.set_model_version_tag(name, version, key, value)
            elif key in present:
                self.client.delete_model_version_tag(name, version, key)

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
        return self.download_version(version, target)

    def download_version(self, record: VersionRecord, target: Path) -> Path:
        """Fetch the version's artifact into `target`, from its run (the artifact path is the tail of its
        source: `served-model`, or `served-adapter` for an adapter)."""
        if record.run_id is None:
            raise RegistryError(
                f"{record.name} v{record.version} has no run to download its artifact from "
                f"({self.tracker.tracking_uri})"
            )
        root = self.tracker.get_run(record.run_id).artifact_uri.rstrip("/")
        path = record.source[len(root) + 1 :] if record.source.startswith(root + "/") else SERVED_ARTIFACT
        target.mkdir(parents=True, exist_ok=True)
        # through the client: a models:/ URI would be resolved against the default registry, not this one
        return Path(self.client.download_artifacts(record.run_id, path, str(target)))


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
