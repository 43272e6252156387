"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="session")
def tiny_base() -> Path:
    """The built-in tiny Llama, built once (~30 s) into the cache the CLI uses, reused across test runs."""
    from lifecycle.train.tiny_base import build_tiny_llama

    return build_tiny_llama(REPO / "mlruns" / "cache" / "base-models")
