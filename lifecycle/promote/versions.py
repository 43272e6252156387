"""What promotion, rollback and pool verification read from the registry: one version by number or by alias, and
its artifact on this machine. A thin layer over lifecycle.registry (which alone imports mlflow)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.pool.verify import local_folder

if TYPE_CHECKING:
    from lifecycle.registry.models import Registry, VersionRecord


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
