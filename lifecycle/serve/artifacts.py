"""The weights a deployment pins, on this machine and verified: a registered version's artifact (its folder when
the store is local, else downloaded once into the cache under its digest), an unregistered base model's folder,
each adapter's folder. Every one is checked against its manifest and the digest the pool file pins before a
server may start from it: a vanished artifact or a changed byte stops the deployment, never serves."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lifecycle import manifest
from lifecycle.errors import ManifestError, ServeError
from lifecycle.pool.schema import Adapter, BaseWeights, Deployment, RegisteredModel
from lifecycle.pool.verify import local_folder

if TYPE_CHECKING:
    from lifecycle.registry.models import VersionRecord


class Versions(Protocol):
    """What fetching reads from the registry (lifecycle.promote.versions.RegisteredVersions)."""

    def find(self, name: str, version: str) -> VersionRecord | None: ...
    def fetch(self, record: VersionRecord, target: Path) -> Path: ...


class Artifacts:
    """Resolves pins to verified folders; downloads land in `cache_dir/artifacts/<digest>`."""

    def __init__(self, versions: Versions | None, cache_dir: Path) -> None:
        self.versions = versions
        self.cache_dir = Path(cache_dir)

    def model_dir(self, deployment: Deployment) -> Path:
        """The folder vLLM serves for `deployment`, verified against the pinned digest."""
        model = deployment.model
        if isinstance(model, BaseWeights):
            return self._base(deployment.name, model)
        return self._pinned(f"deployment {deployment.name!r}: {model.name} v{model.version}", model)

    def adapter_dir(self, deployment: str, adapter: Adapter) -> Path:
        return self._pinned(
            f"deployment {deployment!r}: adapter {adapter.name} ({adapter.model} v{adapter.version})", adapter
        )

    def adapter_dirs(self, deployment: Deployment) -> dict[str, Path]:
        return {a.name: self.adapter_dir(deployment.name, a) for a in deployment.adapters}

    def _pinned(self, label: str, pin: RegisteredModel | Adapter) -> Path:
        folder = local_folder(pin.artifact)
        if folder is None or not folder.is_dir():
            folder = self._download(label, pin)
        _check(label, folder, pin.manifest_digest)
        return folder

    def _download(self, label: str, pin: RegisteredModel | Adapter) -> Path:
        target = self.cache_dir / "artifacts" / pin.manifest_digest
        done = target / "artifact"
        if done.is_dir():
            return done
        if local_folder(pin.artifact) is not None:
            raise ServeError(f"{label}: the artifact {pin.artifact} is gone; it cannot be served")
        if self.versions is None:
            raise ServeError(f"{label}: {pin.artifact} is not on this machine and no registry is configured")
        name = pin.name if isinstance(pin, RegisteredModel) else pin.model
        record = self.versions.find(name, str(pin.version))
        if record is None:
            raise ServeError(f"{label}: not a registered version any more; it cannot be served")
        partial = target / "partial"
        shutil.rmtree(partial, ignore_errors=True)
        fetched = self.versions.fetch(record, partial)
        fetched.rename(done)  # only a finished download gets the name a later start trusts
        shutil.rmtree(partial, ignore_errors=True)
        return done

    def _base(self, deployment: str, model: BaseWeights) -> Path:
        from lifecycle.recipe.schema import ModelSpec
        from lifecycle.train.base import base_manifest, resolve_base

        label = f"deployment {deployment!r}: base {model.source}"
        try:
            folder = resolve_base(ModelSpec(base=model.source), self.cache_dir)
        except ValueError as exc:
            raise ServeError(f"{label}: {exc}") from None
        digest = base_manifest(folder, self.cache_dir).digest
        if digest != model.manifest_digest:
            raise ServeError(
                f"{label}: the weights in {folder} have manifest digest {digest}, but the pool pins "
                f"{model.manifest_digest}; it cannot be served"
            )
        return folder


def _check(label: str, folder: Path, pinned: str) -> None:
    try:
        found = manifest.verify(folder)
    except ManifestError as exc:
        raise ServeError(
            f"{label}: {folder} does not match its manifest, so it cannot be served: {exc}"
        ) from None
    if found.digest != pinned:
        raise ServeError(
            f"{label}: {folder} has manifest digest {found.digest}, but the pool pins {pinned}; it cannot be served"
        )
