"""How other commands reach a running pool: `lifecycle serve` listens on 127.0.0.1 for `--status` and `apply`, and
writes where (and the token it wants) to a state file only its user can read, `HOME/serve/pool.json`.

GET /status: what runs (the pool, each replica's health and restarts, recent events).
POST /apply: reconcile to a pool file's text; one at a time (a second gets 409 while the first runs). The answer
carries the pool before and after, the actions and their timings, or the error and whether it was reverted.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from pydantic import BaseModel

from lifecycle.engines import supervise
from lifecycle.errors import LifecycleError, PoolBusy, RecipeError, RolloutFailed, ServeError
from lifecycle.pool.load import parse_pool
from lifecycle.pool.schema import Pool

if TYPE_CHECKING:
    from lifecycle.serve.pool import PoolRunner
    from lifecycle.settings import Settings

STATE_NAME = "pool.json"
APPLY_TIMEOUT_S = 3600.0


class ReplicaStatus(BaseModel):
    name: str
    url: str
    healthy: bool
    restarts: int
    started_at: float
    adapters: list[str]


class DeploymentStatus(BaseModel):
    name: str
    serves: str  # "demo-tickets v3 (W8A8)" or "base builtin:tiny-llama"
    residency: str
    replicas: list[ReplicaStatus]
    adapters: list[str]  # "name (model vN)"


class PoolStatus(BaseModel):
    front_url: str
    pool_path: str
    pool: Pool
    deployments: list[DeploymentStatus]
    applied: dict[str, Any] | None  # the last apply: commit, pr, at, actions
    events: list[str]


class ApplyAnswer(BaseModel):
    ok: bool
    before: Pool | None = None
    after: Pool | None = None
    actions: list[str] = []
    timings: list[tuple[str, float]] = []
    seconds: float = 0.0
    error: str | None = None
    reverted: bool = False


@dataclass(frozen=True)
class ServeState:
    pid: int
    started: int  # the process's start time in clock ticks: tells it from a reused pid
    front_url: str
    control_url: str
    token: str
    pool_path: str

    @classmethod
    def read(cls, path: Path) -> ServeState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def alive(self) -> bool:
        return supervise.start_time(self.pid) == self.started


def state_path(settings: Settings) -> Path:
    return settings.home / "serve" / STATE_NAME


class ControlServer:
    """The control endpoint of a running pool; `close()` removes the state file."""

    def __init__(self, runner: PoolRunner, state_file: Path, pool_path: Path) -> None:
        self.runner = runner
        self.state_file = state_file
        self.pool_path = pool_path
        self.token = secrets.token_urlsafe(24)
        self.applying = threading.Lock()
        self.applied: dict[str, Any] | None = None
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, name="pool-control", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def publish(self) -> None:
        """Write the state file (mode 0600), atomically: from now on other commands find this pool."""
        pid = os.getpid()
        state = ServeState(
            pid=pid,
            started=supervise.start_time(pid) or 0,
            front_url=self.runner.front.url,
            control_url=self.url,
            token=self.token,
            pool_path=str(self.pool_path),
        )
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(f".tmp{pid}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(state), fh, indent=2)
        os.replace(tmp, self.state_file)

    def close(self) -> None:
        mine = ServeState.read(self.state_file)
        if mine is not None and mine.token == self.token:
            self.state_file.unlink(missing_ok=True)
        self._http.shutdown()
        self._http.server_close()

    def status(self) -> PoolStatus:
        runner = self.runner
        with runner.lock:
            pool = runner.pool
            deployments = []
            for d in pool.deployments:
                replicas = [
                    ReplicaStatus(
                        name=r.name,
                        url=r.server.root_url,
                        healthy=r.alive and r.server.running(),
                        restarts=r.restarts,
                        started_at=r.started_at,
                        adapters=sorted(r.spec.lora_modules),
                    )
                    for r in runner.replicas.get(d.name, [])
                ]
                m = d.model
                serves = (
                    f"base {m.source}"
                    if m.kind == "base"
                    else f"{m.name} v{m.version} ({m.quantization.scheme})"
                )
                adapters = [f"{a.name} ({a.model} v{a.version})" for a in d.adapters]
                deployments.append(
                    DeploymentStatus(
                        name=d.name,
                        serves=serves,
                        residency=d.residency,
                        replicas=replicas,
                        adapters=adapters,
                    )
                )
        return PoolStatus(
            front_url=runner.front.url,
            pool_path=str(self.pool_path),
            pool=pool,
            deployments=deployments,
            applied=self.applied,
            events=list(runner.events),
        )

    def apply(self, text: str, path: str, commit: str | None, pr: int | None) -> tuple[int, ApplyAnswer]:
        if not self.applying.acquire(blocking=False):
            return 409, ApplyAnswer(ok=False, error="another apply is changing this pool; try again after it")
        try:
            try:
                desired = parse_pool(text, Path(path)).pool
            except RecipeError as exc:
                return 400, ApplyAnswer(ok=False, error="\n".join(exc.problems))
            try:
                done = self.runner.reconcile(desired)
            except RolloutFailed as exc:
                return 200, ApplyAnswer(ok=False, error=str(exc), reverted=True)
            except LifecycleError as exc:
                return 200, ApplyAnswer(ok=False, error=str(exc))
            self.pool_path = Path(path)
            self.applied = {"commit": commit, "pr": pr, "at": time.time(), "actions": list(done.actions)}
            return 200, ApplyAnswer(
                ok=True,
                before=done.before,
                after=done.after,
                actions=list(done.actions),
                timings=list(done.timings),
                seconds=done.seconds,
            )
        finally:
            self.applying.release()


def _handler(control: ControlServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _authorized(self) -> bool:
            if secrets.compare_digest(self.headers.get("Authorization", ""), f"Bearer {control.token}"):
                return True
            self._send(401, {"error": "a bearer token from the pool's state file is required"})
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path == "/status":
                self._send(200, control.status().model_dump(mode="json"))
            else:
                self._send(404, {"error": f"{self.path}: no such endpoint"})

        def do_POST(self) -> None:
            if not self._authorized():
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path != "/apply":
                return self._send(404, {"error": f"{self.path}: no such endpoint"})
            status, answer = control.apply(body["pool"], body["path"], body.get("commit"), body.get("pr"))
            return self._send(status, answer.model_dump(mode="json"))

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class ControlClient:
    """Talks to the pool a state file describes."""

    def __init__(self, state: ServeState) -> None:
        self.state = state
        self._headers = {"Authorization": f"Bearer {state.token}"}

    def status(self) -> PoolStatus:
        return PoolStatus.model_validate(self._call("GET", "/status", None, 30.0)[1])

    def apply(
        self, text: str, path: Path, *, commit: str | None = None, pr: int | None = None
    ) -> ApplyAnswer:
        body = {"pool": text, "path": str(path), "commit": commit, "pr": pr}
        status, answer = self._call("POST", "/apply", body, APPLY_TIMEOUT_S)
        if status == 409:
            raise PoolBusy(f"the pool at {self.state.front_url} is busy: {answer.get('error')}")
        parsed = ApplyAnswer.model_validate(answer)
        if status == 400:
            raise RecipeError((parsed.error or "").splitlines())
        return parsed

    def _call(self, method: str, path: str, body: Any, timeout_s: float) -> tuple[int, Any]:
        try:
            response = requests.request(
                method, self.state.control_url + path, json=body, headers=self._headers, timeout=timeout_s
            )
            return response.status_code, response.json()
        except (requests.RequestException, ValueError) as exc:
            raise ServeError(f"the pool serving {self.state.pool_path} did not answer: {exc}") from None


def find_running(settings: Settings) -> ControlClient | None:
    """The pool `lifecycle serve` runs on this machine, or None (no state file, or its process is gone)."""
    state = ServeState.read(state_path(settings))
    if state is None or not state.alive():
        return None
    return ControlClient(state)


def running_pool(settings: Settings) -> Pool | None:
    """What the pool running on this machine serves, or None when no pool runs here."""
    client = find_running(settings)
    return None if client is None else client.status().pool
