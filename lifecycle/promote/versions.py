"""What promotion, rollback and pool verification read from the registry: one version by number or by alias, and
its artifact on this machine. A thin layer over lifecycle.registry (which alone imports mlflow)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.pool.verify import local_folder

if TYPE_CHECKING:
    from lifecycle.registry.models import Registry, VersionRecord
    from lifecycle.settings import Settings


class RegisteredVersions:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.where = registry.tracker.tracking_uri

    def find(self, name: str, version: str) -> VersionRecord | None:
        """The version, or None when the model or the version does not exist."""
        return self.registry.find(name, version)

    def by_alias(self, name: str, alias: str) -> VersionRecord | None:
        """The version `alias` points at, or None (no such model, or the alias is unset)."""
        return self.registry.by_alias(name, alias)

    def fetch(self, record: VersionRecord, target: Path) -> Path:
        """The version's artifact folder on this machine: where it lies when the store is local, else a
        download into `target`."""
        folder = local_folder(record.source)
        if folder is not None:
            return folder
        return self.registry.download_version(record, target)


class OnDemandVersions:
    """`RegisteredVersions` opened only when first asked (the store checked then): serving local artifacts
    needs no MLflow, and a replica that has its weights starts without reaching the registry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.where = settings.tracking_uri
        self._versions: RegisteredVersions | None = None

    @property
    def registry(self) -> Registry:
        return self._open().registry

    def _open(self) -> RegisteredVersions:
        if self._versions is None:
            from lifecycle.preflight import check_tracking_store
            from lifecycle.registry.models import Registry
            from lifecycle.registry.tracking import Tracker

            check_tracking_store(self.settings.tracking_uri)
            tracker = Tracker(self.settings.tracking_uri, self.settings.artifacts_dir)
            self._versions = RegisteredVersions(Registry(tracker))
        return self._versions

    def find(self, name: str, version: str) -> VersionRecord | None:
        return self._open().find(name, version)

    def fetch(self, record: VersionRecord, target: Path) -> Path:
        return self._open().fetch(record, target)
