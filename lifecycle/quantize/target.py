"""Which quantization scheme a run produces, decided before training from where the artifact will be served.

Pure: the target's capabilities come in (measured by `engines.probe` for this host, or the table below for a
GPU kind that is not here), a `ServeTarget` or the reason for a refusal comes out.

    quantize.scheme: FP8        -> the FP8 layout that serves on the target and is fastest there
    quantize.scheme: FP8_BLOCK  -> itself, if the target serves it; refused otherwise, naming what does serve
"""

from __future__ import annotations

import difflib
from typing import cast

from lifecycle.engines.probe import Capabilities, SchemeSupport
from lifecycle.recipe.schema import ConcreteScheme, Recipe, SkyLaunch
from lifecycle.results import ServeTarget

STAGE = "target"  # the run directory's results/target.json
FP8_LAYOUTS: tuple[ConcreteScheme, ...] = ("FP8_DYNAMIC", "FP8_BLOCK")
# FP8_DYNAMIC is preferred (one FP8 layout for every GPU that has FP8 tensor cores) unless it serves at less
# than this fraction of FP8_BLOCK's speed: the sign of a fallback kernel (vLLM-CPU on AMX: ~1/1000).
SLOW_FALLBACK = 0.5

_ALL: tuple[ConcreteScheme, ...] = (
    "FP8_DYNAMIC",
    "FP8_BLOCK",
    "FP8_STATIC",
    "W8A8",
    "W8A8_STATIC",
    "W4A16",
    "none",
)
# GPU kinds by what vLLM's CUDA build serves on them (vLLM's quantization hardware table). FP8 tensor cores
# from Ada (sm 8.9) and Hopper (9.0) on; Ampere serves FP8 checkpoints weight-only (Marlin), not block FP8;
# int8 activations from Turing (7.5); Volta serves unquantized models only.
_FULL = _ALL
_AMPERE: tuple[ConcreteScheme, ...] = ("FP8_DYNAMIC", "W8A8", "W8A8_STATIC", "W4A16", "none")
_TURING: tuple[ConcreteScheme, ...] = ("W8A8", "W8A8_STATIC", "none")
_VOLTA: tuple[ConcreteScheme, ...] = ("none",)
GPU_KINDS: dict[str, tuple[str, tuple[ConcreteScheme, ...]]] = {
    "H100": ("Hopper", _FULL),
    "H200": ("Hopper", _FULL),
    "H800": ("Hopper", _FULL),
    "H20": ("Hopper", _FULL),
    "GH200": ("Hopper", _FULL),
    "B200": ("Blackwell", _FULL),
    "B100": ("Blackwell", _FULL),
    "GB200": ("Blackwell", _FULL),
    "L4": ("Ada", _FULL),
    "L40": ("Ada", _FULL),
    "L40S": ("Ada", _FULL),
    "RTX4090": ("Ada", _FULL),
    "RTX6000-ADA": ("Ada", _FULL),
    "A100": ("Ampere", _AMPERE),
    "A10": ("Ampere", _AMPERE),
    "A10G": ("Ampere", _AMPERE),
    "A40": ("Ampere", _AMPERE),
    "A6000": ("Ampere", _AMPERE),
    "RTX3090": ("Ampere", _AMPERE),
    "T4": ("Turing", _TURING),
    "V100": ("Volta", _VOLTA),
}


class SchemeRefused(Exception):
    """The target cannot serve the requested scheme; the message names the schemes that do serve."""


def target_name(recipe: Recipe) -> str:
    """'local', or the GPU kind the artifact will be served on: `quantize.serve_on`, else the SkyPilot
    training accelerator (a local launch is served where it was trained)."""
    if recipe.quantize.serve_on:
        return recipe.quantize.serve_on
    if isinstance(recipe.launch, SkyLaunch):
        return recipe.launch.accelerators.split(":")[0]
    return "local"


def gpu_kind(name: str) -> str | None:
    """The table's key for an accelerator name ('H100-80GB' -> 'H100', 'a100-80gb' -> 'A100'), else None."""
    upper = name.split(":")[0].upper()
    if upper in GPU_KINDS:
        return upper
    prefixes = [k for k in GPU_KINDS if upper.startswith(k + "-")]
    return max(prefixes, key=len) if prefixes else None


def unknown_target_message(name: str) -> str:
    guess = difflib.get_close_matches(name.upper(), list(GPU_KINDS), n=1, cutoff=0.5)
    return (
        f"unknown serving target {name!r}"
        + (f"; did you mean {guess[0]!r}?" if guess else "")
        + f" (allowed: 'local', {', '.join(repr(k) for k in GPU_KINDS)})"
    )


def table_capabilities(name: str) -> Capabilities:
    """What vLLM's CUDA build serves on a GPU kind (not measured: the GPU is not here)."""
    kind = gpu_kind(name)
    if kind is None:
        raise SchemeRefused(unknown_target_message(name))
    family, schemes = GPU_KINDS[kind]
    return Capabilities(
        target=kind,
        description=f"vLLM (CUDA) on {kind} ({family})",
        source="table",
        schemes={s: SchemeSupport(scheme=s, serves=s in schemes) for s in _ALL},
    )


def needed(requested: str) -> tuple[str, ...]:
    """The schemes whose support must be known to decide `requested` (what to probe)."""
    return FP8_LAYOUTS if requested == "FP8" else (requested,)


def resolve(requested: str, caps: Capabilities) -> ServeTarget:
    """The concrete scheme for `requested` on the target described by `caps`, or SchemeRefused."""
    where = "this host" if caps.target == "local" else caps.target
    if requested == "FP8":
        scheme, why = _pick_fp8(caps, where)
    else:
        support = caps.schemes.get(requested)
        if support is None:
            raise SchemeRefused(
                f"{requested!r}: not known whether {where} serves it (probe it: lifecycle doctor)"
            )
        if not support.serves:
            raise SchemeRefused(
                f"{requested!r} does not serve on {where}{_because(support)}; {_serving(caps)}"
            )
        scheme, why = (
            cast(ConcreteScheme, requested),
            f"{requested} serves on {where}{_speed(support)}" + _slower_note(caps, support),
        )
    return ServeTarget(
        target=caps.target,
        description=caps.description,
        source=caps.source,
        requested=requested,
        scheme=scheme,
        reason=f"{why} ({caps.description}; {'measured here' if caps.source == 'probe' else 'known for this GPU'})",
        fingerprint=caps.fingerprint,
    )


def _pick_fp8(caps: Capabilities, where: str) -> tuple[ConcreteScheme, str]:
    layouts = {s: caps.schemes[s] for s in FP8_LAYOUTS if s in caps.schemes}
    serving = {s: v for s, v in layouts.items() if v.serves}
    if not serving:
        reasons = "; ".join(f"{s}{_because(v)}" for s, v in layouts.items())
        raise SchemeRefused(f"'FP8': no FP8 layout serves on {where} ({reasons}); {_serving(caps)}")
    if len(serving) == 1:
        (only,) = serving
        other = next(s for s in FP8_LAYOUTS if s != only)
        lost = layouts.get(other)
        return cast(ConcreteScheme, only), (
            f"FP8 -> {only}: {other} does not serve on {where}{_because(lost) if lost else ''}"
        )
    dynamic, block = serving["FP8_DYNAMIC"], serving["FP8_BLOCK"]
    if (
        dynamic.tokens_per_s
        and block.tokens_per_s
        and dynamic.tokens_per_s < SLOW_FALLBACK * block.tokens_per_s
    ):
        return "FP8_BLOCK", (
            f"FP8 -> FP8_BLOCK: both serve on {where}, FP8_DYNAMIC at {dynamic.tokens_per_s:g} tok/s (a fallback "
            f"kernel), FP8_BLOCK at {block.tokens_per_s:g} tok/s"
        )
    return "FP8_DYNAMIC", f"FP8 -> FP8_DYNAMIC: both layouts serve on {where}{_speeds(dynamic, block)}"


def _because(support: SchemeSupport) -> str:
    return f" ({support.error})" if support.error else ""


def _speed(support: SchemeSupport) -> str:
    return f" at {support.tokens_per_s:g} tok/s" if support.tokens_per_s else ""


def _speeds(dynamic: SchemeSupport, block: SchemeSupport) -> str:
    if dynamic.tokens_per_s and block.tokens_per_s:
        return f" ({dynamic.tokens_per_s:g} vs {block.tokens_per_s:g} tok/s); the per-channel layout is kept"
    return "; the per-channel layout is preferred"


def _slower_note(caps: Capabilities, support: SchemeSupport) -> str:
    """A warning when a named scheme serves through a fallback kernel far slower than the best one here."""
    rates = {s: v.tokens_per_s for s, v in caps.schemes.items() if v.serves and v.tokens_per_s}
    if not support.tokens_per_s or not rates:
        return ""
    best = max(rates, key=lambda s: rates[s] or 0.0)
    if support.tokens_per_s < 0.1 * (rates[best] or 0.0):
        return f"; warning: {best} serves {rates[best] / support.tokens_per_s:.0f}x faster here"
    return ""


def _serving(caps: Capabilities) -> str:
    ok = caps.serving()
    unknown = [s for s in _ALL if s not in caps.schemes]
    text = "schemes that serve there: " + (", ".join(ok) if ok else "none")
    if caps.target == "local":
        text = text.replace("there", "here")
        if unknown:
            text += f" (not yet probed: {', '.join(unknown)}; `lifecycle doctor` probes them)"
    return text
