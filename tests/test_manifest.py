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
