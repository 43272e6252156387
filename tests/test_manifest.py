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


def test_a_flip_that_keeps_the_recorded_time_is_still_caught_when_racy(tmp_path: Path) -> None:
    import os

    folder = make_folder(tmp_path / "m")
    written = manifest.write(folder)  # files and manifest in the same second: every file counts as racy
    target = folder / "model.safetensors"
    stamp = written.files["model.safetensors"].mtime_ns
    target.write_bytes(b"\x00" * 999 + b"\x02")
    assert stamp is not None
    os.utime(target, ns=(stamp, stamp))  # as if the flip landed in the same clock tick as the hashing
    with pytest.raises(ManifestError, match="changed: model.safetensors"):
        manifest.verify(folder)
