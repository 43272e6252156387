"""`lifecycle serve`: run the pool a file asks for on this machine until asked to stop.

The front comes up first (clients get one address at once), then each deployment's replicas are started and
checked, then the control endpoint is published so `lifecycle serve --status` and `lifecycle apply` find the pool.
Every `supervise_every_s` a supervisor pass restarts dead replicas. Ctrl-C or SIGTERM stops every server; none
outlives this process (they run under the watchdog, which follows its parent).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from lifecycle.engines.vllm import VllmSpec
from lifecycle.errors import PoolBusy
from lifecycle.pool.load import LoadedPool
from lifecycle.serve.artifacts import Artifacts
from lifecycle.serve.control import ControlServer, ServeState
from lifecycle.serve.front import Front
from lifecycle.serve.pool import Endpoint, Launch, PoolRunner, Server

SUPERVISE_EVERY_S = 2.0


def vllm_launch(serve_python: Path, *, startup_timeout_s: float = 600) -> Launch:
    """Start replicas as real vLLM servers from the serving environment (CPU or GPU build, probed once).

    On a CPU host, vLLM binds each server's compute threads to cores (its "auto" binding assumes it is alone on the
    machine: every server of a pool lands on the same core). Here each server gets a core no running server holds
    (`CoreBook`); when none is free (more servers than cores, as in a blue-green replace on a small host) it runs
    unbound with one thread. A new server bound to a core where another server is busy was seen to get no CPU
    time at all for minutes (its worker never started), so a shared core is never bound.
    """
    from lifecycle.engines.vllm import detect_device
    from lifecycle.engines.vllm_server import start_server

    book = CoreBook(sorted(os.sched_getaffinity(0)))

    @functools.cache
    def device() -> Literal[
        "cpu", "gpu"
    ]:  # asked once, when the first server starts (an empty pool needs none)
        return detect_device(serve_python)

    def launch(spec: VllmSpec, workdir: Path) -> Server:
        if device() != "cpu" or "VLLM_CPU_OMP_THREADS_BIND" in spec.env:
            return start(spec, workdir)
        core = book.take()
        binding = (
            {"VLLM_CPU_OMP_THREADS_BIND": str(core)}
            if core is not None
            else {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
        )
        try:
            server = start(dataclasses.replace(spec, env={**spec.env, **binding}), workdir)
        except BaseException:
            book.give_back(core)
            raise
        book.held_by(core, server)
        return server

    def start(spec: VllmSpec, workdir: Path) -> Server:
        # readiness is the runner's smoke check on every served name, so no extra 1-token request here
        return start_server(
            spec,
            python=serve_python,
            workdir=workdir,
            startup_timeout_s=startup_timeout_s,
            check_generation=False,
            device=device(),
        )

    return launch


class CoreBook:
    """Which core each running CPU server is bound to: a core is free again once its server stops."""

    def __init__(self, cores: list[int]) -> None:
        self._cores = cores
        self._held: dict[int, Server | None] = {}  # None: its server is starting
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """A free core, now held; None when every core has a running (or starting) server."""
        with self._lock:
            for core in self._cores:
                if core not in self._held or not _running(self._held[core]):
                    self._held[core] = None
                    return core
            return None

    def held_by(self, core: int | None, server: Server) -> None:
        """The started server on the core `take` gave it."""
        if core is not None:
            with self._lock:
                self._held[core] = server

    def give_back(self, core: int | None) -> None:
        if core is not None:
            with self._lock:
                self._held.pop(core, None)


class RunningPool:
    """A pool started from a file: its front, runner and control endpoint. `stop()` ends all three."""

    def __init__(
        self,
        loaded: LoadedPool,
        *,
        launch: Launch,
        artifacts: Artifacts,
        workdir: Path,
        state_file: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        say: Callable[[str], None] = lambda line: None,
        endpoint: Callable[[], Endpoint] | None = None,
    ) -> None:
        """`endpoint` makes what clients reach (the router, with a routing policy); the plain front by default."""
        other = ServeState.read(state_file)
        if other is not None and other.alive():
            raise PoolBusy(
                f"a pool already runs on this machine (process {other.pid}, {other.front_url}, serving "
                f"{other.pool_path}): change it with `lifecycle apply`, or stop it first"
            )
        self.front: Endpoint = endpoint() if endpoint is not None else Front(host, port)
        self.runner = PoolRunner(launch, artifacts, workdir, self.front, say=say)
        self.control: ControlServer | None = None
        self._stopped = threading.Event()
        try:
            self.runner.reconcile(loaded.pool)
            self.control = ControlServer(self.runner, state_file, loaded.path)
            self.control.publish()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return self.front.url

    def supervise_until_stopped(self, every_s: float = SUPERVISE_EVERY_S) -> None:
        while not self._stopped.wait(every_s):
            self.runner.supervise()

    def stop(self) -> None:
        self._stopped.set()
        if self.control is not None:
            self.control.close()
        self.runner.stop()
        self.front.stop()


def _running(holder: Server | None) -> bool:
    return holder is None or holder.running()  # a server still starting holds its core
