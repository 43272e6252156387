"""`lifecycle serve`: run the pool a file asks for on this machine until asked to stop.

The front comes up first (clients get one address at once), then each deployment's replicas are started and
checked, then the control endpoint is published so `lifecycle serve --status` and `lifecycle apply` find the pool.
Every `supervise_every_s` a supervisor pass restarts dead replicas. Ctrl-C or SIGTERM stops every server; none
outlives this process (they run under the watchdog, which follows its parent).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
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
from lifecycle.serve.pool import Launch, PoolRunner, Server

SUPERVISE_EVERY_S = 2.0


def vllm_launch(serve_python: Path, *, startup_timeout_s: float = 600) -> Launch:
    """Start replicas as real vLLM servers from the serving environment (CPU or GPU build, probed once).

    On a CPU host, vLLM binds every server's compute threads to the same cores (its "auto" binding assumes it
    is alone on the machine), so a pool's servers, and a new one starting beside them in a blue-green replace,
    would all queue on one core. Each server gets its own core instead, taken in turn (`spread_cores`).
    """
    from lifecycle.engines.vllm import detect_device
    from lifecycle.engines.vllm_server import start_server

    cores = sorted(os.sched_getaffinity(0))
    launched = itertools.count()

    @functools.cache
    def device() -> Literal["cpu", "gpu"]:  # asked once, when the first server starts (an empty pool needs none)
        return detect_device(serve_python)

    def launch(spec: VllmSpec, workdir: Path) -> Server:
        if device() == "cpu" and "VLLM_CPU_OMP_THREADS_BIND" not in spec.env:
            core = spread_cores(cores, next(launched))
            spec = dataclasses.replace(spec, env={**spec.env, "VLLM_CPU_OMP_THREADS_BIND": core})
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


def spread_cores(cores: list[int], nth: int) -> str:
    """The core list (vLLM's VLLM_CPU_OMP_THREADS_BIND form) for the `nth` server started on this host: one core
    each, in turn, so that servers share a core only when there are more servers than cores."""
    return str(cores[nth % len(cores)])


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
    ) -> None:
        other = ServeState.read(state_file)
        if other is not None and other.alive():
            raise PoolBusy(
                f"a pool already runs on this machine (process {other.pid}, {other.front_url}, serving "
                f"{other.pool_path}): change it with `lifecycle apply`, or stop it first"
            )
        self.front = Front(host, port)
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
