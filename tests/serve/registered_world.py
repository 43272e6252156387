"""Versions registered the way the register stage registers them (its lineage tags, a passing gate), from real
model and adapter folders."""

from __future__ import annotations

from pathlib import Path

from promote_world import registration

from lifecycle import manifest
from lifecycle.registry.models import Registry, VersionRecord


def register_version(
    registry: Registry, name: str, folder: Path, base_digest: str, *, scheme: str
) -> VersionRecord:
    digest = manifest.verify(folder).digest
    tags, description = registration(digest, passed=True, base_digest=base_digest, scheme=scheme)
    run_id = registry.tracker.start_run("pool-tests", name, {})
    return registry.register(name, run_id, folder, tags, description, "candidate")
