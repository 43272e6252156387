"""Atomic checkpoints: a checkpoint counts only once fully written.

Order of writing: the trainer's files (weights or adapter, optimizer, scheduler, RNG state, trainer state with
the data position), then a manifest with the sha256 of each file, then the `COMMITTED` marker. A preemption at
any point leaves either a committed checkpoint or one that resume ignores. On object stores that upload
asynchronously, the marker is written last, so a reader that sees it sees a complete checkpoint.

Several nodes: each node uploads what its own processes wrote, so no single process can seal the checkpoint.
Each node seals its own part instead: `checkpoint-N/node-K/MANIFEST.json` (its files: those named with one of
its ranks, e.g. `rng_state_3.pth`, `__3_0.distcp`, `zero_pp_rank_3_...`; node 0 also takes the unranked files
rank 0 writes), then `node-K/COMMITTED` ("DIGEST K NODES"). The checkpoint counts once every node's marker is
there and every listed file has its recorded size; the files are re-hashed only when asked (`full=True`): on a
bucket mount, reading a 70B checkpoint back costs a terabyte of downloads.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lifecycle import manifest
from lifecycle.errors import ManifestError

COMMIT_MARKER = "COMMITTED"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_NODE = re.compile(r"^node-(\d+)$")
# files one rank writes, by the libraries' names: the trainer's RNG state, torch.distributed.checkpoint shards
# (FSDP), DeepSpeed ZeRO partitions
_RANKED = (
    re.compile(r"(?:^|/)rng_state_(\d+)\.pth$"),
    re.compile(r"(?:^|/)__(\d+)_\d+\.distcp$"),
    re.compile(r"zero_pp_rank_(\d+)_"),
)


@dataclass(frozen=True)
class Place:
    """Where this process stands in the job: its node, the number of nodes, processes per node."""

    node: int = 0
    nodes: int = 1
    ranks_per_node: int = 1


def place(env: Mapping[str, str]) -> Place:
    """From torchrun's variables (GROUP_RANK is the node's rank); one node without them."""
    world = int(env.get("WORLD_SIZE", "1") or 1)
    local = int(env.get("LOCAL_WORLD_SIZE", "") or world)
    return Place(
        node=int(env.get("GROUP_RANK", "0") or 0), nodes=max(1, world // max(local, 1)), ranks_per_node=local
    )


def owner(name: str, ranks_per_node: int) -> int:
    """The node whose process wrote the file `name` (a path inside the checkpoint): by the rank in its name;
    rank 0's node for the files ranks share."""
    for pattern in _RANKED:
        found = pattern.search(name)
        if found:
            return int(found.group(1)) // max(ranks_per_node, 1)
    return 0


def commit(checkpoint: Path, where: Place = Place()) -> manifest.Manifest:
    """Seal a fully written checkpoint folder: manifest first, marker last. On several nodes, called by one
    process per node (once every process has written its files): seals that node's part."""
    if where.nodes > 1:
        return _commit_node(checkpoint, where)
    (checkpoint / COMMIT_MARKER).unlink(missing_ok=True)
    written = manifest.write(checkpoint, exclude=(manifest.MANIFEST_NAME, COMMIT_MARKER))
    _write_synced(checkpoint / COMMIT_MARKER, written.digest + "\n")
    return written


def step_of(checkpoint: Path) -> int:
    match = _CHECKPOINT.match(checkpoint.name)
    if not match:
        raise ValueError(f"{checkpoint} is not named checkpoint-STEP")
    return int(match.group(1))


def _commit_node(checkpoint: Path, where: Place) -> manifest.Manifest:
    part = checkpoint / f"node-{where.node}"
    part.mkdir(exist_ok=True)
    (part / COMMIT_MARKER).unlink(missing_ok=True)

    def mine(name: str) -> bool:
        return not _NODE.match(name.split("/", 1)[0]) and owner(name, where.ranks_per_node) == where.node

    written = manifest.compute(checkpoint, only=mine)
    manifest.write_json_atomic(part / manifest.MANIFEST_NAME, written.model_dump(mode="json"))
    _write_synced(part / COMMIT_MARKER, f"{written.digest} {where.node} {where.nodes}\n")
    return written


def _write_synced(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _nodes_committed(checkpoint: Path, *, verify: bool, full: bool) -> bool:
    """Every node's marker is there, they agree on the number of nodes, and (when `verify`) every file each
    node listed has its size (and, when `full`, its hash)."""
    marks: dict[int, tuple[str, int]] = {}
    for part in checkpoint.glob("node-*"):
        try:
            digest, number, count = (part / COMMIT_MARKER).read_text().split()
            marks[int(number)] = (digest, int(count))
        except (OSError, ValueError):
            continue
    counts = {count for _, count in marks.values()}
    if len(counts) != 1 or set(marks) != set(range(counts.pop())):
        return False
    if not verify:
        return True
    for node, (digest, _) in marks.items():
        try:
            listed = manifest.read(checkpoint / f"node-{node}")
        except ManifestError:
            return False
        if listed.digest != digest:
            return False
        for name, entry in listed.files.items():
            path = checkpoint / name
            try:
                if path.stat().st_size != entry.size:
                    return False
            except OSError:
                return False
            if full and manifest.sha256_file(path) != entry.sha256:
                return False
    return True


def is_committed(checkpoint: Path, *, verify: bool = True, full: bool = False) -> bool:
    """True if the marker exists and (when `verify`) every file matches the manifest. A checkpoint of several
    nodes: every node's marker, and (when `verify`) every file at its recorded size, re-hashed only if `full`."""
    marker = checkpoint / COMMIT_MARKER
    if not marker.is_file():
        return any(checkpoint.glob("node-*")) and _nodes_committed(checkpoint, verify=verify, full=full)
    if not verify:
        return True
    try:
        found = manifest.verify(checkpoint, exclude=(manifest.MANIFEST_NAME, COMMIT_MARKER), full=full)
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
