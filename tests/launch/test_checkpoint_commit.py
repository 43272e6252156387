"""Atomic checkpoints: resume takes the newest *committed* checkpoint; half-written ones are skipped.

On a MOUNT_CACHED bucket the files of a checkpoint upload in the background and in any order, so after a
preemption the bucket can hold: files without a marker, a marker whose files never all arrived, a torn file.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle import manifest
from lifecycle.launch.checkpoints import COMMIT_MARKER, commit, is_committed, latest_committed


def write_checkpoint(root: Path, step: int, *, committed: bool) -> Path:
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(bytes([step % 256]) * 256)
    (ckpt / "optimizer.pt").write_bytes(b"o" * 128)
    (ckpt / "scheduler.pt").write_bytes(b"s" * 16)
    (ckpt / "rng_state.pth").write_bytes(b"r" * 16)
    (ckpt / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    if committed:
        commit(ckpt)
    return ckpt


def test_the_newest_committed_checkpoint_wins(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        write_checkpoint(tmp_path, step, committed=True)
    assert latest_committed(tmp_path) == tmp_path / "checkpoint-30"


def test_files_without_a_marker_are_skipped(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 10, committed=True)
    write_checkpoint(tmp_path, 20, committed=False)  # preempted before the manifest and marker
    assert latest_committed(tmp_path) == tmp_path / "checkpoint-10"


def test_a_manifest_without_a_marker_is_skipped(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 10, committed=True)
    late = write_checkpoint(tmp_path, 20, committed=False)
    manifest.write(late, exclude=(manifest.MANIFEST_NAME, COMMIT_MARKER))  # preempted between the two
    assert latest_committed(tmp_path) == tmp_path / "checkpoint-10"


def test_a_marker_over_a_changed_file_is_skipped(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 10, committed=True)
    torn = write_checkpoint(tmp_path, 20, committed=True)
    (torn / "optimizer.pt").write_bytes(b"o" * 64)  # the upload of this file never completed
    assert not is_committed(torn)
    assert latest_committed(tmp_path) == tmp_path / "checkpoint-10"


def test_a_marker_that_arrived_before_a_file_is_skipped(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 10, committed=True)
    early = write_checkpoint(tmp_path, 20, committed=True)
    (early / "rng_state.pth").unlink()  # uploaded out of order: marker there, a file not yet
    assert latest_committed(tmp_path) == tmp_path / "checkpoint-10"


def test_a_marker_from_another_commit_is_skipped(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 10, committed=True)
    other = write_checkpoint(tmp_path, 20, committed=True)
    (other / COMMIT_MARKER).write_text("0" * 64 + "\n")  # digest of different content
    assert latest_committed(tmp_path) == tmp_path / "checkpoint-10"


def test_no_committed_checkpoint_means_start_from_scratch(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 5, committed=False)
    (tmp_path / "not-a-checkpoint").mkdir()
    assert latest_committed(tmp_path) is None
    assert latest_committed(tmp_path / "absent") is None
