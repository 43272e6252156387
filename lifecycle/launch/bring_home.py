"""Bring the weights home: copy a run's output from its bucket into `<run>/train` and verify it first.

Everything arrives in a temporary folder beside the destination; each folder is checked against its
MANIFEST.json (every file's sha256 and size) and only then renamed into place. A changed, missing or
unexpected file raises ManifestError naming it, and nothing in `<run>/train` is touched: no later stage starts
from a bad copy.

Checkpoints stay in the bucket (they are for resuming there, and can be far larger than the model).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lifecycle import manifest
from lifecycle.errors import ManifestError

MODEL = "model"
FOLDERS = (MODEL, "adapter")  # verified against their manifests; the model is required
FILES = ("worker.json", "metrics.jsonl", "base_eval.json")  # small records the worker writes beside the model


class OutputStore(Protocol):
    """Where a run's output lives: a bucket, or a folder (a local copy or a mounted bucket)."""

    @property
    def uri(self) -> str: ...

    def fetch(self, name: str, dest: Path) -> bool:
        """Copy the file or folder `name` of the output to `dest`; False if the output has no such entry."""
        ...


@dataclass(frozen=True)
class LocalFolderStore:
    """An output folder on this machine: a copy, or a bucket mounted with a FUSE tool."""

    root: Path

    @property
    def uri(self) -> str:
        return str(self.root)

    def fetch(self, name: str, dest: Path) -> bool:
        src = self.root / name
        if src.is_dir():
            shutil.copytree(src, dest)
            return True
        if src.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            return True
        return False


@dataclass(frozen=True)
class BroughtHome:
    model_dir: Path
    manifest_digest: str
    adapter_dir: Path | None
    files: tuple[str, ...]
    source: str


def bring_home(
    store: OutputStore,
    train_dir: Path,
    *,
    folders: Sequence[str] = FOLDERS,
    files: Sequence[str] = FILES,
    required: Sequence[str] = (MODEL,),
) -> BroughtHome:
    """Fetch, verify, then move into `train_dir`. Raises ManifestError on any mismatch or a missing model."""
    train_dir.mkdir(parents=True, exist_ok=True)
    incoming = train_dir / f".incoming-{uuid.uuid4().hex[:8]}"
    incoming.mkdir()
    try:
        fetched: list[str] = []
        digests: dict[str, str] = {}
        for name in folders:
            if not store.fetch(name, incoming / name):
                if name in required:
                    raise ManifestError(
                        f"{store.uri}: no {name}/ folder: the job did not finish writing its final {name}, "
                        "so there is nothing to bring home (its committed checkpoints stay there to resume)"
                    )
                continue
            try:
                # every byte: a copy keeps modification times, so sizes and times alone would trust it
                digests[name] = manifest.verify(incoming / name, full=True).digest
            except ManifestError as exc:
                detail = str(exc).replace(str(incoming / name), f"{store.uri.rstrip('/')}/{name}")
                raise ManifestError(
                    f"the {name} copied from the bucket is not the one the job wrote: {detail}"
                ) from None
            fetched.append(name)
        fetched += [name for name in files if store.fetch(name, incoming / name)]
        for name in fetched:  # everything verified: now replace what is there, one rename per entry
            _replace(incoming / name, train_dir / name)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return BroughtHome(
        model_dir=train_dir / MODEL,
        manifest_digest=digests.get(MODEL, ""),
        adapter_dir=train_dir / "adapter" if "adapter" in digests else None,
        files=tuple(name for name in fetched if name in files),
        source=store.uri,
    )


def _replace(src: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None and old.is_dir():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()
