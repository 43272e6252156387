"""Resolve a recipe's base model to a local Hugging Face folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lifecycle import manifest
from lifecycle.errors import StageError
from lifecycle.recipe.schema import BUILTIN_PREFIX, ModelSpec


def resolve_base(spec: ModelSpec, cache_dir: Path) -> Path:
    """builtin:NAME is built locally (seeded, cached); a folder is used as is; a hub id is fetched where the job
    runs (a GPU node), and fails clearly where no hub is reachable."""
    if spec.is_builtin:
        from lifecycle.train.tiny_base import build_tiny_llama

        name = spec.base[len(BUILTIN_PREFIX) :]
        if name == "tiny-llama":
            return build_tiny_llama(cache_dir / "base-models")
        raise StageError(f"unknown builtin model {name!r}")
    path = Path(spec.base)
    if path.is_dir():
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.base))
    except Exception as exc:  # offline, gated, or missing: all need the same advice
        raise StageError(
            f"base model {spec.base!r} is not a local folder and could not be fetched from the hub ({exc}). "
            "Download it first and point model.base at the folder."
        ) from None


def base_manifest(base_dir: Path, cache_dir: Path) -> manifest.Manifest:
    """The base model's manifest, remembered in the cache under the folder's path: the first run hashes every
    file, later runs only files whose size or modification time changed (a base is hashed once, not per run)."""
    key = hashlib.sha256(str(base_dir.resolve()).encode()).hexdigest()[:16]
    return manifest.remembered(base_dir, cache_dir / "base-manifests" / f"{key}.json")
