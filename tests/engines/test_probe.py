"""The engine capability probe against the real vLLM of the serving environment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lifecycle.engines import probe
from lifecycle.quantize.target import needed, resolve

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "mlruns" / "cache"  # shared with the CLI and the other tests: a host is probed once


def test_fp8_layouts_are_probed_by_serving_and_cached(tiny_base: Path, serve_python: Path) -> None:
    caps = probe.capabilities(needed("FP8"), serve_python=serve_python, cache_dir=CACHE)
    assert set(needed("FP8")) <= set(caps.schemes)
    for support in caps.schemes.values():
        assert support.probed_at is not None
        if support.serves:
            assert support.tokens_per_s and support.tokens_per_s > 0 and support.error is None
        else:  # a refusal carries the engine's own words, e.g. the kernel it could not find
            assert support.error and "vLLM could not serve" not in support.error
    if not caps.serving():
        pytest.skip(f"no FP8 layout serves on this host: {[s.error for s in caps.schemes.values()]}")
    chosen = resolve("FP8", caps)
    assert chosen.scheme in caps.serving() and chosen.fingerprint == caps.fingerprint

    def must_not_probe(scheme: str) -> None:
        raise AssertionError(f"{scheme} was probed again although it is cached")

    again = probe.capabilities(
        needed("FP8"), serve_python=serve_python, cache_dir=CACHE, on_probe=must_not_probe
    )
    assert again == caps
    on_disk = json.loads(probe.cache_path(CACHE, probe.host_info(serve_python)).read_text())
    assert on_disk["fingerprint"] == caps.fingerprint


def test_a_model_the_engine_cannot_load_is_a_result_with_the_root_error(
    tiny_base: Path, serve_python: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "bogus-quant"
    shutil.copytree(tiny_base, broken)
    config = json.loads((broken / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bogus"}
    (broken / "config.json").write_text(json.dumps(config))
    support = probe.measure("bogus", broken, serve_python=serve_python, workdir=tmp_path / "work")
    assert not support.serves and support.tokens_per_s is None
    assert support.error is not None and "bogus" in support.error.lower()
    assert "Log " not in support.error  # the root error, not the whole report with its log tail
