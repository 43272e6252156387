"""Atomic checkpoints: a checkpoint counts only once fully written.

Order of writing: the trainer's files (weights or adapter, optimizer, scheduler, RNG state, trainer state with
the data position), then a manifest with the sha256 of each file, then the `COMMITTED` marker. A preemption at
any point leaves either a committed checkpoint or one that resume ignores. On object stores that upload
asynchronously, the marker is written last, so a reader that sees it sees a complete checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from lifecycle import manifest
from lifecycle.errors import ManifestError

COMMIT_MARKER = "COMMITTED"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def commit(checkpoint: Path) -> manifest.Manifest:
    """Seal a fully written checkpoint folder: manifest first, marker last."""
    (checkpoint / COMMIT_MARKER).unlink(missing_ok=True)
    written = manifest.write(checkpoint, exclude=(manifest.MANIFEST_NAME, COMMIT_MARKER))
    marker = checkpoint / COMMIT_MARKER
    tmp = checkpoint / f".{COMMIT_MARKER}.tmp"
    tmp.write_text(written.digest + "\n")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, marker)
    return written


def step_of(checkpoint: Path) -> int:
    match = _CHECKPOINT.match(checkpoint.name)
    if not match:
        raise ValueError(f"{checkpoint} is not named checkpoint-STEP")
    return int(match.group(1))


def is_committed(checkpoint: Path, *, verify: bool = True) -> bool:
    """True if the marker exists and (when `verify`) every file matches the manifest."""
    marker = checkpoint / COMMIT_MARKER
    if not marker.is_file():
        return False
    if not verify:
        return True
    try:
        found = manifest.verify(checkpoint, exclude=(manifest.MANIFEST_NAME, COMMIT_MARKER))
    except ManifestError:
        return False
    return marker.read_text().strip() == found.digest


def latest_committed(checkpoints_dir: Path, *, verify: bool = True) -> Path | None:
    """The newest committed checkpoint under `checkpoints_dir`; half-written ones are skipped."""
    if not checkpoints_dir.is_dir():
        return None
    found = [p for p in checkpoints_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    for checkpoint in sorted(found, key=step_of, reverse=True):
        if is_committed(checkpoint, verify=verify):
            return checkpoint
    return None


def prune(checkpoints_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` committed checkpoints, and uncommitted ones older than the newest kept."""
    found = sorted(
        (p for p in checkpoints_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)), key=step_of
    )
    committed = [p for p in found if is_committed(p, verify=False)]
    kept = committed[-keep:] if keep > 0 else []
    oldest_kept = step_of(kept[0]) if kept else None
    removed = []
    for path in found:
        if path in kept:
            continue
        if path in committed or (oldest_kept is not None and step_of(path) < oldest_kept):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
