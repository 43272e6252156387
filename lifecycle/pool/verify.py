"""`lifecycle verify serving/pool.yaml`, what CI runs on a promotion's pull request (no GPU): every pinned
version exists, passed its gate, and is exactly what the pin says (artifact, weight digest, quantization scheme
and config hash, recipe, base); the residency rules hold; an artifact on this machine still matches its manifest.
Every problem names the deployment and the file's line."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from lifecycle import manifest
from lifecycle.errors import ManifestError
from lifecycle.pool import pins
from lifecycle.pool.load import LoadedPool
from lifecycle.pool.schema import Adapter, Deployment, RegisteredModel


class Versions(Protocol):
    """What verification reads from the registry."""

    def find(self, name: str, version: str) -> pins.Version | None: ...


def verify_pool(loaded: LoadedPool, versions: Versions, *, where: str = "the registry") -> list[str]:
    """Every problem with the pool's pins, as `FILE:LINE: field.path: deployment 'x': message`."""
    problems: list[str] = []
    for i, deployment in enumerate(loaded.pool.deployments):
        loc: tuple[str | int, ...] = ("deployments", i)
        if isinstance(deployment.model, RegisteredModel):
            problems += _check(loaded, versions, where, deployment, (*loc, "model"), deployment.model)
        for j, adapter in enumerate(deployment.adapters):
            problems += _check(loaded, versions, where, deployment, (*loc, "adapters", j), adapter)
    return problems


def _check(
    loaded: LoadedPool,
    versions: Versions,
    where: str,
    deployment: Deployment,
    loc: tuple[str | int, ...],
    pin: RegisteredModel | Adapter,
) -> list[str]:
    name = pin.name if isinstance(pin, RegisteredModel) else pin.model

    def problem(at: tuple[str | int, ...], message: str) -> str:
        return loaded.problem(at, f"deployment {deployment.name!r}: {message}")

    record = versions.find(name, str(pin.version))
    if record is None:
        return [problem((*loc, "version"), f"{name} v{pin.version} is not a registered version in {where}")]
    evidence = pins.evidence_problems(record, adapter=isinstance(pin, Adapter))
    if evidence:
        return [problem((*loc, "version"), message) for message in evidence]
    problems = [problem((*loc, *field), message) for field, message in pins.mismatches(pin, record)]
    residency = pins.residency_problem(deployment.residency, record)
    if residency:
        problems.append(problem((*loc[:2], "residency"), residency))
    if not problems:
        problems += [problem((*loc, *field), message) for field, message in artifact_problems(pin)]
    return problems


def local_folder(uri: str) -> Path | None:
    """The folder behind an artifact URI when it is on this machine (file:// or a plain path), else None."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme and uri.startswith("/"):
        return Path(uri)
    return None


def artifact_problems(pin: RegisteredModel | Adapter) -> list[tuple[tuple[str, ...], str]]:
    """An artifact on this machine must still match its manifest and the pinned digest (sizes and times decide
    what is re-hashed, as everywhere in the platform). Remote artifacts are judged by the registry's record."""
    folder = local_folder(pin.artifact)
    if folder is None:
        return []
    if not folder.is_dir():
        return [(("artifact",), f"{pin.artifact}: the artifact is gone")]
    try:
        found = manifest.verify(folder)
    except ManifestError as exc:
        return [(("artifact",), str(exc).replace("\n", " "))]
    if found.digest != pin.manifest_digest:
        return [
            (
                ("manifest_digest",),
                f"pinned {pin.manifest_digest!r}, but the artifact's manifest is {found.digest!r}",
            )
        ]
    return []
