"""Manifests catch a changed, missing or unexpected file; atomic JSON writes never leave a torn file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle import manifest
from lifecycle.errors import ManifestError


def make_folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"\x00" * 1000)
    (root / "config.json").write_text("{}")
    (root / "sub" / "tokenizer.json").write_text('{"a": 1}')
    return root


def test_written_manifest_verifies_and_has_a_stable_digest(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m")
    written = manifest.write(folder)
    assert set(written.files) == {"model.safetensors", "config.json", "sub/tokenizer.json"}
    assert written.files["model.safetensors"].size == 1000
    assert manifest.verify(folder).digest == written.digest
    assert manifest.compute(make_folder(tmp_path / "copy")).digest == written.digest  # content, not place


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda f: (f / "config.json").write_text('{"x": 1}'), "changed: config.json"),
        (lambda f: (f / "sub" / "tokenizer.json").unlink(), "missing: sub/tokenizer.json"),
        (lambda f: (f / "extra.bin").write_bytes(b"1"), "unexpected: extra.bin"),
        (
            lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 999 + b"\x01"),
            "changed: model.safetensors",
        ),
    ],
)
def test_verify_names_what_changed(tmp_path: Path, damage, words: str) -> None:  # type: ignore[no-untyped-def]
    folder = make_folder(tmp_path / "m")
    manifest.write(folder)
    damage(folder)
    with pytest.raises(ManifestError, match=words):
        manifest.verify(folder)


def test_folder_without_manifest_is_incomplete(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="never completed"):
        manifest.verify(make_folder(tmp_path / "m"))


def test_verify_rehashes_only_what_changed_unless_asked_for_all(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import os

    folder = make_folder(tmp_path / "m")
    old = 1_700_000_000_000_000_000  # files written long before their manifest: trusted by size and time
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(old, old))
    written = manifest.write(folder)
    hashed: list[str] = []
    real = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    assert manifest.verify(folder).digest == written.digest
    assert hashed == []  # a stat per file, no reading
    assert manifest.verify(folder, full=True).digest == written.digest
    assert sorted(hashed) == ["config.json", "model.safetensors", "tokenizer.json"]
    hashed.clear()
    # a byte flipped in place, same size: the new modification time sends exactly that file to be hashed
    (folder / "model.safetensors").write_bytes(b"\x00" * 999 + b"\x01")
    with pytest.raises(ManifestError, match="changed: model.safetensors"):
        manifest.verify(folder)
    assert hashed == ["model.safetensors"]


def flip(path: Path, *, keep_time: bool = False) -> None:
    """Flip one byte in place, same size; with `keep_time`, put the modification time back as it was."""
    import os

    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    if keep_time:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_freshly_written_folder_is_not_hashed_again(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m")  # files written a moment before their manifest
    written = manifest.write(folder)
    assert manifest.hash_stats().times(written) >= 1.0
    before = manifest.hash_stats()
    assert manifest.verify(folder).digest == written.digest
    assert manifest.verify(folder).digest == written.digest
    assert manifest.hash_stats() == before  # a stat per file, no reading


def test_a_flip_right_after_writing_is_caught_by_sizes_and_times(tmp_path: Path) -> None:
    """The race the clock reading closes: a change in the same clock tick as the files' last write."""
    for attempt in range(20):
        folder = make_folder(tmp_path / f"m{attempt}")
        manifest.write(folder)
        flip(folder / "model.safetensors")
        with pytest.raises(ManifestError, match="changed: model.safetensors"):
            manifest.verify(folder)


def test_a_flip_with_its_time_put_back_is_caught_by_a_full_verify(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m")
    written = manifest.write(folder)
    flip(folder / "model.safetensors", keep_time=True)
    assert manifest.verify(folder).digest == written.digest  # sizes and times cannot see this one
    with pytest.raises(ManifestError, match="changed: model.safetensors"):
        manifest.verify(folder, full=True)


def test_a_racy_file_is_hashed_by_every_verify(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A file whose time is not before the writer's clock reading (here: in the future, and no time to wait
    for it) is trusted by nothing but its content."""
    import os
    import time

    monkeypatch.setattr(manifest, "_SETTLE_S", 0.0)
    folder = make_folder(tmp_path / "m")
    for path in folder.rglob("*"):  # the others written long ago
        os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    future = time.time_ns() + 3600 * 10**9
    os.utime(folder / "model.safetensors", ns=(future, future))
    written = manifest.write(folder)
    assert written.hashed_after_ns is not None and written.hashed_after_ns < future
    before = manifest.hash_stats()
    manifest.verify(folder)
    assert manifest.hash_stats().since(before).files == 1  # the racy file, and only it
    flip(folder / "model.safetensors", keep_time=True)
    with pytest.raises(ManifestError, match="changed: model.safetensors"):
        manifest.verify(folder)


def test_a_manifest_without_a_clock_reading_trusts_only_files_well_before_it(tmp_path: Path) -> None:
    """Manifests written before the clock reading existed: judged by the manifest file's own time."""
    folder = make_folder(tmp_path / "m")
    written = manifest.write(folder)
    manifest.write_json_atomic(
        folder / manifest.MANIFEST_NAME, written.model_dump(exclude={"hashed_after_ns"})
    )
    flip(folder / "model.safetensors", keep_time=True)
    with pytest.raises(ManifestError, match="changed: model.safetensors"):
        manifest.verify(folder)


def test_hash_stats_count_full_reads(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m")
    before = manifest.hash_stats()
    written = manifest.write(folder)
    manifest.verify(folder)
    hashed = manifest.hash_stats().since(before)
    assert (hashed.files, hashed.bytes, hashed.times(written)) == (3, written.total_bytes, 1.0)
    manifest.verify(folder, full=True)
    assert manifest.hash_stats().since(before).times(written) == 2.0
    manifest.reset_hash_stats()
    assert manifest.hash_stats() == manifest.HashStats()


def test_a_remembered_manifest_hashes_a_base_once(tmp_path: Path) -> None:
    import os

    folder = make_folder(tmp_path / "base")
    record = tmp_path / "cache" / "base.json"
    before = manifest.hash_stats()
    first = manifest.remembered(folder, record)
    assert manifest.hash_stats().since(before).files == 3
    assert first.digest == manifest.compute(folder).digest
    before = manifest.hash_stats()
    assert manifest.remembered(folder, record).digest == first.digest
    assert manifest.hash_stats().since(before).files == 0
    (folder / "config.json").write_text('{"x": 1}')  # changed: only it is read again
    again = manifest.remembered(folder, record)
    assert manifest.hash_stats().since(before).files == 1
    assert again.digest == manifest.compute(folder).digest != first.digest
    assert not [p for p in os.listdir(folder) if p.startswith(".")]  # no clock-reading file left behind
