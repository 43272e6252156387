"""Weight manifests: the sha256 and size of every file in a model or checkpoint folder.

A folder counts as complete only once its manifest is written, and any later stage verifies it before use:
a changed, missing or unexpected file stops the pipeline.

Weights are hashed once, when written. The manifest also keeps each file's size and modification time, and
the folder's clock just before its files were looked at, so a later `verify` re-hashes only files whose size
or time changed; `verify(full=True)` (`lifecycle verify RUN`) re-hashes everything. At 140 GB of weights that
is the difference between a stat per file and fifteen minutes of reading.

Why a stat is enough ("racy git"): file times come from a clock with coarse ticks (a few milliseconds on
Linux, a second on some mounts), so a file changed in the same tick as an earlier write keeps its time. The
writer therefore takes a reading of the folder's own clock (the time of a file it touches there) *before*
looking at any file, and waits, if needed, until that reading is later than every file's time. Any change
after the reading gets a time no earlier than it, so differs from the recorded one; a file whose recorded
time is not earlier than the reading ("racy") is re-hashed by every verify. A change whose time is put back
by hand (`touch -d`, `os.utime`) is only seen by a full verify.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lifecycle.errors import ManifestError

MANIFEST_NAME = "MANIFEST.json"
_CHUNK = 1 << 20
_TMP_PREFIX = f".{MANIFEST_NAME}.tmp-"  # the writer's clock reading and half-written manifest; never content
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # weight files, as `HashStats.times` counts them
_RACY_NS = 2_000_000_000  # manifests without a clock reading: files modified this close to it are re-hashed
_SETTLE_S = 2.5  # longest wait for the folder's clock to pass its newest file (FAT's ticks are 2 s)


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
    # the folder's clock just before its files were looked at: a file recorded with an earlier time cannot
    # have changed since without its time changing too (None: older manifests, judged by the manifest's time)
    hashed_after_ns: int | None = None

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


# ------------------------------------------------------------------------------------ counting full hashes


@dataclass(frozen=True)
class HashStats:
    """Files read in full by `sha256_file` in this process so far, and how often each content was read."""

    files: int = 0
    bytes: int = 0
    by_digest: dict[str, int] = field(default_factory=dict)

    def since(self, earlier: HashStats) -> HashStats:
        """What was hashed after `earlier` was taken."""
        counts = {d: n - earlier.by_digest.get(d, 0) for d, n in self.by_digest.items()}
        return HashStats(
            self.files - earlier.files, self.bytes - earlier.bytes, {d: n for d, n in counts.items() if n}
        )

    def times(self, manifest: Manifest, suffixes: tuple[str, ...] = ()) -> float:
        """How many times the files of `manifest` (those ending in one of `suffixes`, if given: WEIGHTS) were
        read in full, weighted by bytes (1.0: once). Counted by content: a copy read elsewhere counts too."""
        sizes = {
            entry.sha256: entry.size
            for name, entry in manifest.files.items()
            if not suffixes or name.endswith(suffixes)
        }
        total = sum(sizes.values())
        if not total:
            return 0.0
        return sum(self.by_digest.get(digest, 0) * size for digest, size in sizes.items()) / total


_hashed: Counter[str] = Counter()
_hashed_bytes = 0


def hash_stats() -> HashStats:
    """What this process has hashed since it started (or since `reset_hash_stats`)."""
    return HashStats(sum(_hashed.values()), _hashed_bytes, dict(_hashed))


def reset_hash_stats() -> None:
    global _hashed_bytes
    _hashed.clear()
    _hashed_bytes = 0


def sha256_file(path: Path) -> str:
    global _hashed_bytes
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    digest = h.hexdigest()
    _hashed[digest] += 1
    _hashed_bytes += size
    return digest


# ------------------------------------------------------------------------------------ computing and checking


def _files(
    folder: Path, exclude: tuple[str, ...], only: Callable[[str], bool] | None = None
) -> list[tuple[str, Path]]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in exclude or path.name in exclude or path.name.startswith(_TMP_PREFIX):
            continue
        if only is not None and not only(rel):
            continue
        found.append((rel, path))
    return found


def compute(
    folder: Path,
    exclude: tuple[str, ...] = (MANIFEST_NAME,),
    known: Manifest | None = None,
    trusted_before_ns: int = 0,
    *,
    only: Callable[[str], bool] | None = None,
) -> Manifest:
    """Hash every regular file under `folder` (recursively), except the names in `exclude` (and, given `only`,
    those whose relative path it refuses).

    A file whose size and modification time equal its entry in `known`, and whose recorded time is before
    `trusted_before_ns`, keeps that entry's hash unread."""
    files = {}
    for rel, path in _files(folder, exclude, only):
        stat = path.stat()  # before reading: a change while we read gets a later time than this one
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
    """Hash the folder and write `MANIFEST.json` atomically (temp file + rename), with the clock reading that
    lets later checks trust sizes and times (see the module docstring)."""
    tmp = folder / f"{_TMP_PREFIX}{os.getpid()}"
    clock = _clock_after(tmp, _newest(folder, exclude))
    manifest = compute(folder, exclude).model_copy(update={"hashed_after_ns": clock})
    _write_json(tmp, manifest.model_dump())
    os.replace(tmp, folder / MANIFEST_NAME)
    return manifest


def _newest(folder: Path, exclude: tuple[str, ...]) -> int:
    return max((path.stat().st_mtime_ns for _, path in _files(folder, exclude)), default=0)


def _clock_after(stamp: Path, newest_ns: int) -> int:
    """The folder's clock (the time of `stamp`, touched now), waiting up to `_SETTLE_S` for it to pass
    `newest_ns`: files written just before hashing would otherwise share its tick and stay racy."""
    stamp.touch()
    deadline = time.monotonic() + _SETTLE_S
    pause = 0.001
    while (now := stamp.stat().st_mtime_ns) <= newest_ns and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
        os.utime(stamp)  # the file system's "now", from the same clock that times the folder's files
    return now


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

    Only files whose size or modification time differ from the manifest, or that were racy when it was
    written, are re-hashed, unless `full`."""
    expected = read(folder)
    trusted_before = expected.hashed_after_ns
    if trusted_before is None:  # an older manifest: trust only files well before the manifest's own time
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


def remembered(folder: Path, record: Path, exclude: tuple[str, ...] = (MANIFEST_NAME,)) -> Manifest:
    """The manifest of a folder we do not own (a base model), kept in the file `record`: hashed in full the
    first time, afterwards only files whose size or time changed, by the rules of `verify`."""
    known: Manifest | None = None
    if record.is_file():
        try:
            known = Manifest.model_validate_json(record.read_text())
        except ValueError:
            known = None  # a damaged record only costs a re-hash
    probe = folder / f"{_TMP_PREFIX}{os.getpid()}"
    try:  # the folder's own clock where we may write there; else ours, less a margin for a mount's skew
        clock = _clock_after(probe, _newest(folder, exclude))
        probe.unlink()
    except OSError:
        clock = time.time_ns() - _RACY_NS
    trusted = known.hashed_after_ns if known is not None and known.hashed_after_ns is not None else 0
    found = compute(folder, exclude, known=known, trusted_before_ns=trusted)
    found = found.model_copy(update={"hashed_after_ns": clock})
    reused = known is not None and all(entry is known.files.get(n) for n, entry in found.files.items())
    if not reused or set(found.files) != set(known.files if known else ()):
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, found.model_dump())
    return found


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON so that a reader sees either the old file or the whole new one, never a torn write."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_json(tmp, payload)
    os.replace(tmp, path)


def _write_json(path: Path, payload: object) -> None:
    with path.open("w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
