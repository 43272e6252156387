"""Atomic checkpoints: resume takes the newest *committed* checkpoint; half-written ones are skipped.

On a MOUNT_CACHED bucket the files of a checkpoint upload in the background and in any order, so after a
preemption the bucket can hold: files without a marker, a marker whose files never all arrived, a torn file.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle import manifest
from lifecycle.launch.checkpoints import (
    COMMIT_MARKER,
    Place,
    commit,
    is_committed,
    latest_committed,
    owner,
    place,
)


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


# ---- several nodes: each seals its own part (checkpoint-N/node-K/), the checkpoint counts once all have

TWO_NODES = [Place(node=k, nodes=2, ranks_per_node=2) for k in (0, 1)]


def write_node_files(ckpt: Path, node: int, step: int) -> None:
    """What node `node`'s two processes write (ranks 2k and 2k+1): node 0 also writes what rank 0 shares."""
    ckpt.mkdir(parents=True, exist_ok=True)
    if node == 0:
        (ckpt / "model.safetensors").write_bytes(bytes([step % 256]) * 256)
        (ckpt / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    for rank in (2 * node, 2 * node + 1):
        (ckpt / f"rng_state_{rank}.pth").write_bytes(b"r" * (16 + rank))
        (ckpt / "optimizer_0").mkdir(exist_ok=True)
        (ckpt / "optimizer_0" / f"__{rank}_0.distcp").write_bytes(bytes([rank]) * 64)


def test_owner_reads_the_rank_from_the_libraries_file_names() -> None:
    assert owner("rng_state_3.pth", 2) == 1
    assert owner("pytorch_model_fsdp_0/__5_0.distcp", 4) == 1
    assert owner("global_step10/bf16_zero_pp_rank_9_mp_rank_00_optim_states.pt", 8) == 1
    assert owner("model.safetensors", 8) == 0 and owner("rng_state.pth", 8) == 0
    assert place({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "1"}) == Place(1, 2, 8)
    assert place({}) == Place(0, 1, 1)


def test_a_checkpoint_of_two_nodes_counts_once_both_have_sealed_their_part(tmp_path: Path) -> None:
    first = tmp_path / "checkpoint-10"
    for node in (0, 1):
        write_node_files(first, node, 10)
    for where in TWO_NODES:
        listed = commit(first, where)
        assert all(owner(name, 2) == where.node for name in listed.files)
    assert is_committed(first) and is_committed(first, full=True)

    # step 20: node 0 sealed; node 1 wrote its shards and died before its marker
    second = tmp_path / "checkpoint-20"
    for node in (0, 1):
        write_node_files(second, node, 20)
    commit(second, TWO_NODES[0])
    assert not is_committed(second, verify=False)
    assert latest_committed(tmp_path) == first

    # once node 1 seals it, it counts; a shard torn afterwards (short) makes it not count again
    commit(second, TWO_NODES[1])
    assert latest_committed(tmp_path) == second
    (second / "optimizer_0" / "__3_0.distcp").write_bytes(b"\x03" * 10)
    assert latest_committed(tmp_path) == first


def test_sizes_are_checked_always_and_hashes_only_when_asked(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-10"
    for node in (0, 1):
        write_node_files(ckpt, node, 10)
    for where in TWO_NODES:
        commit(ckpt, where)
    (ckpt / "rng_state_2.pth").write_bytes(b"X" * 18)  # same size, other bytes
    assert is_committed(ckpt)
    assert not is_committed(ckpt, full=True)


def test_markers_that_disagree_on_the_number_of_nodes_do_not_count(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-10"
    for node in (0, 1):
        write_node_files(ckpt, node, 10)
    commit(ckpt, TWO_NODES[0])
    commit(ckpt, Place(node=1, nodes=3, ranks_per_node=2))
    assert not is_committed(ckpt, verify=False)
