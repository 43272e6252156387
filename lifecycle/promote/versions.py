"""What promotion and pool verification read from the registry: one version by number, and its artifact on this
machine. A thin layer over lifecycle.registry (which alone imports mlflow)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.errors import RegistryError
from lifecycle.pool.verify import local_folder

if TYPE_CHECKING:
    from lifecycle.registry.models import Registry, VersionRecord

_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class RegisteredVersions:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.where = registry.tracker.tracking_uri

    def find(self, name: str, version: str) -> VersionRecord | None:
        """The version, or None when the model or the version does not exist."""
        try:
            return self.registry.get(name, version)
        except Exception as exc:  # mlflow's MlflowException, which only lifecycle.registry imports
            if getattr(exc, "error_code", None) in _ABSENT:
                return None
            raise RegistryError(f"{name} v{version} at {self.where}: {exc}") from None

    def fetch(self, record: VersionRecord, target: Path) -> Path:
        """The version's artifact folder on this machine: where it lies when the store is local, else a
        download into `target`."""
        from lifecycle.registry.models import SERVED_ARTIFACT

        folder = local_folder(record.source)
        if folder is not None:
            return folder
        if record.run_id is None:
            raise RegistryError(f"{record.name} v{record.version} has no run to download its artifact from")
        target.mkdir(parents=True, exist_ok=True)
        path = self.registry.client.download_artifacts(record.run_id, SERVED_ARTIFACT, str(target))
        return Path(path)
