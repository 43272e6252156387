"""`lifecycle serve`: run the pool a file asks for on this machine until asked to stop.

The front comes up first (clients get one address at once), then each deployment's replicas are started and
checked, then the control endpoint is published so `lifecycle serve --status` and `lifecycle apply` find the pool.
Every `supervise_every_s` a supervisor pass restarts dead replicas. Ctrl-C or SIGTERM stops every server; none
outlives this process (they run under the watchdog, which follows its parent).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from lifecycle.engines.vllm import VllmSpec
from lifecycle.errors import PoolBusy
from lifecycle.pool.load import LoadedPool
from lifecycle.serve.artifacts import Artifacts
from lifecycle.serve.control import ControlServer, ServeState
from lifecycle.serve.front import Front
from lifecycle.serve.pool import Launch, PoolRunner, Server

SUPERVISE_EVERY_S = 2.0


def vllm_launch(serve_python: Path, *, startup_timeout_s: float = 300) -> Launch:
    """Start replicas as real vLLM servers from the serving environment (CPU or GPU build, probed)."""
    from lifecycle.engines.vllm_server import start_server

    def launch(spec: VllmSpec, workdir: Path) -> Server:
        # readiness is the runner's smoke check on every served name, so no extra 1-token request here
        return start_server(
            spec,
            python=serve_python,
            workdir=workdir,
            startup_timeout_s=startup_timeout_s,
            check_generation=False,
        )

    return launch


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
