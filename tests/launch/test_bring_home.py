"""Bring-home: the model copied from the bucket is verified file by file before anything uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sky_standin import write_fake_output

from lifecycle import manifest
from lifecycle.errors import ManifestError
from lifecycle.launch.bring_home import LocalFolderStore, bring_home


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    out = tmp_path / "bucket" / "run-1"
    write_fake_output(out)
    return out


def test_verified_output_lands_in_the_run(bucket: Path, tmp_path: Path) -> None:
    train = tmp_path / "run" / "train"
    got = bring_home(LocalFolderStore(bucket), train)
    assert got.model_dir == train / "model"
    assert (
        got.manifest_digest
        == manifest.verify(train / "model").digest
        == manifest.read(bucket / "model").digest
    )
    assert got.adapter_dir == train / "adapter"
    assert set(got.files) == {"worker.json", "metrics.jsonl"}
    assert not (train / "checkpoints").exists()  # checkpoints stay in the bucket
    assert [p.name for p in train.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_a_corrupted_file_stops_bring_home(bucket: Path, tmp_path: Path) -> None:
    weights = bucket / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF  # one flipped byte, same size
    weights.write_bytes(bytes(data))
    train = tmp_path / "run" / "train"
    with pytest.raises(ManifestError) as err:
        bring_home(LocalFolderStore(bucket), train)
    message = str(err.value)
    assert "changed: model.safetensors" in message
    assert f"{bucket}/model" in message  # names where the bad copy came from, not a temp folder
    assert not (train / "model").exists()  # nothing half-verified was put in place
    assert [p.name for p in train.iterdir()] == []


def test_a_missing_file_stops_bring_home(bucket: Path, tmp_path: Path) -> None:
    (bucket / "model" / "config.json").unlink()
    with pytest.raises(ManifestError, match="missing: config.json"):
        bring_home(LocalFolderStore(bucket), tmp_path / "train")


def test_an_unexpected_file_stops_bring_home(bucket: Path, tmp_path: Path) -> None:
    (bucket / "adapter" / "stray.bin").write_bytes(b"?")
    with pytest.raises(ManifestError, match="unexpected: stray.bin"):
        bring_home(LocalFolderStore(bucket), tmp_path / "train")


def test_a_model_without_manifest_was_never_completed(bucket: Path, tmp_path: Path) -> None:
    (bucket / "model" / manifest.MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError, match="never completed"):
        bring_home(LocalFolderStore(bucket), tmp_path / "train")


def test_no_model_at_all_says_the_job_did_not_finish(tmp_path: Path) -> None:
    (tmp_path / "bucket").mkdir()
    with pytest.raises(ManifestError, match="did not finish writing its final model"):
        bring_home(LocalFolderStore(tmp_path / "bucket"), tmp_path / "train")


def test_a_full_fine_tune_has_no_adapter(tmp_path: Path) -> None:
    write_fake_output(tmp_path / "bucket", adapter=False)
    got = bring_home(LocalFolderStore(tmp_path / "bucket"), tmp_path / "train")
    assert got.adapter_dir is None


def test_bringing_home_again_replaces_the_previous_copy(bucket: Path, tmp_path: Path) -> None:
    train = tmp_path / "train"
    bring_home(LocalFolderStore(bucket), train)
    (train / "model" / "leftover.txt").write_text("from an earlier attempt")
    bring_home(LocalFolderStore(bucket), train)
    manifest.verify(train / "model")  # the leftover is gone: the folder is exactly the manifest
