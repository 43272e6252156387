"""Weight manifests: the sha256 and size of every file in a model or checkpoint folder.

A folder counts as complete only once its manifest is written, and any later stage verifies it before use:
a changed, missing or unexpected file stops the pipeline.

Weights are hashed once, when written. The manifest also keeps each file's modification time, so a later
`verify` re-hashes only files whose size or modification time changed (a byte flipped in place changes the
modification time); `verify(full=True)` (`lifecycle verify RUN`) re-hashes everything. At 140 GB of weights
that is the difference between a stat per file and fifteen minutes of reading.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lifecycle.errors import ManifestError

MANIFEST_NAME = "MANIFEST.json"
_CHUNK = 1 << 20
_RACY_NS = 2_000_000_000  # files modified less than this before their manifest are always re-hashed


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    sha256: str
    size: int
    mtime_ns: int | None = (
        None  # when hashed; not part of the digest (a copy with new times is the same content)
    )


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)
    files: dict[str, FileEntry]

    @property
    def digest(self) -> str:
        """One sha256 over the sorted entries: names a folder's exact content in a single string."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}\0{self.files[name].sha256}\0{self.files[name].size}\n".encode())
        return h.hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def compute(
    folder: Path,
    exclude: tuple[str, ...] = (MANIFEST_NAME,),
    known: Manifest | None = None,
    trusted_before_ns: int = 0,
) -> Manifest:
    """Hash every regular file under `folder` (recursively), except the names in `exclude`.

    A file whose size and modification time equal its entry in `known`, and whose time is before
    `trusted_before_ns`, keeps that entry's hash unread."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in exclude or path.name in exclude:
            continue
        stat = path.stat()
        before = known.files.get(rel) if known is not None else None
        if (
            before is not None
            and before.mtime_ns == stat.st_mtime_ns
            and before.size == stat.st_size
            and stat.st_mtime_ns < trusted_before_ns
        ):
            files[rel] = before
        else:
            files[rel] = FileEntry(sha256=sha256_file(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return Manifest(files=files)


def write(folder: Path, exclude: tuple[str, ...] = (MANIFEST_NAME,)) -> Manifest:
    """Compute and write `MANIFEST.json` atomically (temp file + rename)."""
    manifest = compute(folder, exclude)
    write_json_atomic(folder / MANIFEST_NAME, manifest.model_dump())
    return manifest


def read(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{folder}: no {MANIFEST_NAME}; the folder was never completed")
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValueError as exc:
        raise ManifestError(f"{path}: unreadable manifest: {exc}") from None


def verify(folder: Path, exclude: tuple[str, ...] = (MANIFEST_NAME,), *, full: bool = False) -> Manifest:
    """Check `folder` against its manifest; raise ManifestError naming every changed, missing or extra file.

    Only files whose size or modification time differ from the manifest are re-hashed, unless `full`."""
    expected = read(folder)
    # A file changed within the same clock tick as its hashing keeps its recorded time (timestamps are coarse):
    # only files last modified well before the manifest was written are trusted by their stat ("racy git").
    trusted_before = (folder / MANIFEST_NAME).stat().st_mtime_ns - _RACY_NS
    actual = compute(folder, exclude, known=None if full else expected, trusted_before_ns=trusted_before)
    problems = []
    for name, entry in sorted(expected.files.items()):
        got = actual.files.get(name)
        if got is None:
            problems.append(f"missing: {name}")
        elif (got.sha256, got.size) != (entry.sha256, entry.size):
            problems.append(
                f"changed: {name} (expected sha256 {entry.sha256[:12]}…, {entry.size} B; "
                f"found {got.sha256[:12]}…, {got.size} B)"
            )
    problems += [f"unexpected: {name}" for name in sorted(set(actual.files) - set(expected.files))]
    if problems:
        raise ManifestError(f"{folder} does not match its manifest:\n  " + "\n  ".join(problems))
    return expected


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON so that a reader sees either the old file or the whole new one, never a torn write."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
