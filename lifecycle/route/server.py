"""The router: one OpenAI-compatible endpoint that sends each request where the policy says, and tells the outside
about it without ever repeating its text.

Per request: `authenticate` (401), the body read under the policy's limit (413), JSON (400), `parse_request`
(400), `plan` (404 unknown model, 403 residency or cost class, 503 nothing healthy), the tenant's budget reserved
(429), then the plan's backends in order: an upstream error or a timeout before the first byte moves the request
to the next one; once the client has a byte, nothing is replayed. Each attempt is one OpenTelemetry span (GenAI
conventions, `lifecycle.*` attributes) whose `traceparent` goes to the backend; at the end the budget is settled
with the real usage, one audit record is appended and the metrics are counted (`lifecycle.route.flight`); the
settling and the audit record are written by one thread of the router's own, in turn, off the request's path.

It runs aiohttp's web server (the HTTP client it calls backends with is aiohttp's too) on an event loop of its own
in a background thread, beside the threads of `lifecycle serve`.
For the pool runner it offers what the thread-based front offers: `set_routes` (served name -> live replicas,
swapped atomically), `drain`, `outstanding`, `url`, `routes`, `stop`. Its own tasks: health checks of every
replica and upstream, and a watcher that reloads the policy file when it changes (validated first; a bad file is
refused and the policy before keeps serving).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from lifecycle.errors import LifecycleError, RecipeError, UserInputError
from lifecycle.pool.schema import Pool
from lifecycle.route.audit import AuditLog
from lifecycle.route.budget import BudgetStore
from lifecycle.route.decide import (
    Health,
    Refusal,
    RouteRequest,
    authenticate,
    cost_filter,
    parse_request,
    plan,
    residency_candidates,
)
from lifecycle.route.flight import Flight, json_response, refusal_response
from lifecycle.route.health import Backend, HealthChecks, Probe, replicas_from_routes, snapshot
from lifecycle.route.load import LoadedPolicy, load_policy
from lifecycle.route.prometheus import RouterMetrics
from lifecycle.route.state import Pick, RouterState, build_state
from lifecycle.route.targets import Replica, resolve_route
from lifecycle.route.telemetry import hmac_key_id, prompt_hmac
from lifecycle.route.upstream import Client, open_client
from lifecycle.serve.front import InFlight

log = logging.getLogger(__name__)

HMAC_KEY_ENV = "LIFECYCLE_PROMPT_HMAC_KEY"  # read at the CLI edge, handed to the Router as bytes
RESIDENCY_HEADER = "x-lifecycle-residency"  # a request may ask for a stricter residency than its tenant's
WATCH_EVERY_S = 1.0
PREFIXES_KEPT = 256  # prompt-prefix keys remembered per replica for affinity (hashes, never text)
PATHS = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}
GRACE_S = 5.0  # requests in flight when the router stops get this long
IDLE_CONNECTION_S = 5.0  # an idle client connection is closed after this long


class Router(InFlight):
    """The routing endpoint. `start()` serves it; `stop()` ends the server, its tasks and its thread."""

    def __init__(
        self,
        loaded: LoadedPolicy,
        *,
        audit: AuditLog,
        hmac_key: bytes,
        env: Mapping[str, str] | None = None,
        budgets: BudgetStore | None = None,
        pool: Pool | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tracer_provider: TracerProvider | None = None,
        watch_every_s: float | None = WATCH_EVERY_S,
    ) -> None:
        prompt_hmac(hmac_key, "")  # a key too short is refused here, not on the first request
        if budgets is None and any(t.budget for t in loaded.policy.tenants):
            raise UserInputError(
                f"{loaded.path}: tenants have budgets; the router needs a budget store for them"
            )
        self.audit = audit
        self.budgets = budgets
        self.hmac_key = hmac_key
        self.hmac_key_id = hmac_key_id(hmac_key)
        self._env = dict(env or {})
        self._pool_given = pool is not None
        self._state = build_state(loaded, pool or loaded.pool, self._env)
        self.metrics = RouterMetrics(self._state.guard)
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("lifecycle.route")
        self.reload_problems: list[str] = []
        self._watch_every_s = watch_every_s
        self._marks = self._watched()
        self._lock = threading.Lock()
        self._served: Mapping[str, tuple[Backend, ...]] = {}
        self._replicas: Mapping[str, tuple[Replica, ...]] = {}
        self._outstanding: dict[tuple[str, str], int] = {}
        self._prefixes: dict[str, OrderedDict[str, None]] = {}
        self._checks = HealthChecks()
        self._health: tuple[object, object, object, Health] | None = None
        self._open_flights = 0
        self._turn = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.client: Client | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY on accepted connections only then (else ~40 ms per answer)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._started = threading.Event()
        self._should_exit = False
        self._exit: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        # settling and audit records, written in order by one thread: the request does not wait for the disk
        self._writes: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = str(self._sock.getsockname()[0])
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}"

    @property
    def state(self) -> RouterState:
        return self._state

    def start(self, timeout_s: float = 30.0) -> Router:
        """Serve in a background thread; returns once the endpoint accepts connections."""
        self._sock.listen(2048)
        self._writer = threading.Thread(target=self._write_loop, name="router-audit", daemon=True)
        self._writer.start()
        self._thread = threading.Thread(target=self._run, name="router", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._started.wait(0.01):
            if self._failure is not None or not self._thread.is_alive():
                self.stop()
                raise LifecycleError(f"the router did not start: {self._failure!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise LifecycleError(f"the router did not start within {timeout_s:.0f} s")
        return self

    def stop(self) -> None:
        """End the server (requests in flight get a few seconds), the health checks, the watcher, the thread;
        then the writer, once every request's settling and audit record is written."""
        self._should_exit = True
        loop, exit_ = self.loop, self._exit
        if loop is not None and exit_ is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed already
                loop.call_soon_threadsafe(exit_.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._writer is not None:
            self._writes.put(None)
            self._writer.join(timeout=30)
            self._writer = None
        self._sock.close()

    def __enter__(self) -> Router:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start(); the thread ends either way
            self._failure = exc
            log.exception("the router stopped")
        finally:
            loop.close()

    async def _main(self) -> None:
        self._exit = asyncio.Event()
        if self._should_exit:  # stop() came first
            return
        self.client = open_client()
        runner = web.AppRunner(
            self._app(),
            handle_signals=False,
            access_log=None,  # an access log is one more place a prompt must never reach
            shutdown_timeout=GRACE_S,
            keepalive_timeout=IDLE_CONNECTION_S,
        )
        background = [asyncio.create_task(self._health_loop())]
        if self._watch_every_s:
            background.append(asyncio.create_task(self._watch_loop(self._watch_every_s)))
        try:
            await runner.setup()
            await web.SockSite(runner, self._sock, backlog=2048).start()
            self._started.set()
            await self._exit.wait()
        finally:
            await runner.cleanup()  # no new connections; requests in flight get GRACE_S, then are cancelled
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=10)
            await self.client.close()
            await asyncio.sleep(0)  # the closed connections' transports finish closing before the loop does
            await asyncio.get_running_loop().shutdown_default_executor()  # to_thread's workers end too

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run `work` as a task of the router's loop that nothing cancels."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def write_later(self, write: Callable[[], None]) -> None:
        """Have the writer thread call `write` (a request's settling and audit record), after those before it;
        the request counts as open until it has (`wait_settled`)."""
        self._writes.put(write)

    def _write_loop(self) -> None:
        while True:
            write = self._writes.get()
            if write is None:
                return
            try:
                write()
            except Exception:  # one request's failure must not end the writing of the others'
                log.exception("writing a request's settling and audit record failed")
            finally:
                self.close_flight()

    # ------------------------------------------------------------------------------------------ the pool

    @property
    def routes(self) -> Mapping[str, tuple[Backend, ...]]:
        """Served name -> the replicas the pool runner last handed over."""
        return self._served

    def set_routes(self, routes: Mapping[str, Sequence[Backend]], *, pool: Pool | None = None) -> None:
        """Replace the live replicas at once (served name -> replicas, as the pool runner publishes them); with
        `pool`, also the pool that route targets resolve through (the one the runner runs)."""
        served = {name: tuple(backends) for name, backends in routes.items() if backends}
        replicas = replicas_from_routes(served)
        with self._lock:
            self._served, self._replicas = served, replicas
            if pool is not None:
                self._pool_given = True
                self._state = build_state(self._state.loaded, pool, self._env)
                self.metrics.guard = self._state.guard

    def take(self, replicas: Sequence[Replica], model: str, pick: Pick, tried: set[str]) -> Replica | None:
        """Choose a replica not yet tried with `pick(replicas, outstanding)` and count the request on it, in one
        step under the lock so that two requests do not both see it idle."""
        with self._lock:
            fresh = [r for r in replicas if r.url not in tried]
            load: dict[str, int] = {}
            for (url, _), n in self._outstanding.items():
                load[url] = load.get(url, 0) + n
            fresh = [replace(r, prefixes=frozenset(self._prefixes.get(r.url, ()))) for r in fresh]
            if fresh:  # ties go to the first: rotate, so that equal replicas take turns
                self._turn = (self._turn + 1) % len(fresh)
                fresh = fresh[self._turn :] + fresh[: self._turn]
            chosen = pick(fresh, load)
            if chosen is not None:
                key = (chosen.url, model)
                self._outstanding[key] = self._outstanding.get(key, 0) + 1
            return chosen

    def took(self, url: str, model: str) -> None:
        """Count a request as sent to `url` for `model` (upstreams: for drain and status only)."""
        with self._lock:
            key = (url, model)
            self._outstanding[key] = self._outstanding.get(key, 0) + 1

    def release(self, url: str, model: str, prefix: str | None = None) -> None:
        with self._lock:
            key = (url, model)
            left = self._outstanding.get(key, 0) - 1
            if left > 0:
                self._outstanding[key] = left
            else:
                self._outstanding.pop(key, None)
            if prefix is not None:
                kept = self._prefixes.setdefault(url, OrderedDict())
                kept[prefix] = None
                kept.move_to_end(prefix)
                while len(kept) > PREFIXES_KEPT:
                    kept.popitem(last=False)

    def unreachable(self, key: str) -> None:
        """A request could not connect to this replica (URL) or upstream (name). On the loop thread."""
        self._checks.failed(key, self._state.policy.health)

    def health(self) -> Health:
        """What `plan` sees: the runner's live replicas and the upstreams, minus what the checks found dead."""
        state, replicas, standings = self._state, self._replicas, self._checks.standings
        cached = self._health
        if cached is not None and cached[0] is state and cached[1] is replicas and cached[2] is standings:
            return cached[3]
        health = snapshot(replicas, [u.name for u in state.policy.upstreams], standings)
        self._health = (state, replicas, standings, health)
        return health

    # ------------------------------------------------------------------------------------------ policy

    def reload(self, path: str | Path | None = None) -> bool:
        """Validate the policy file (default: the one serving) and swap it in; a bad file is refused, logged and
        counted, and the policy before keeps serving. True when swapped."""
        path = Path(path) if path is not None else self._state.loaded.path
        current = self._state
        self._marks = self._watched(path)  # what this reload read: the watcher waits for the next change
        try:
            loaded = load_policy(path, current.pool if self._pool_given else None)
            state = build_state(loaded, current.pool if self._pool_given else loaded.pool, self._env)
        except LifecycleError as exc:
            self.reload_problems = exc.problems if isinstance(exc, RecipeError) else [str(exc)]
            log.error(
                "policy %s refused; the policy before keeps serving:\n  %s",
                path,
                "\n  ".join(self.reload_problems),
            )
            self.metrics.reloaded(False)
            return False
        with self._lock:
            self._state = state
            self.metrics.guard = state.guard
        self.reload_problems = []
        self.metrics.reloaded(True)
        log.warning(
            "policy %s reloaded: %d routes, %d tenants",
            path,
            len(loaded.policy.routes),
            len(loaded.policy.tenants),
        )
        return True

    def _watched(self, path: Path | None = None) -> tuple[tuple[str, float, int], ...]:
        """Modification time and size of the policy file (and of its pool file when the pool comes from it)."""
        loaded = self._state.loaded
        path = path or loaded.path
        paths = [path] + ([] if self._pool_given else [path.parent / loaded.policy.pool])
        marks = []
        for p in paths:
            try:
                st = os.stat(p)
                marks.append((str(p), st.st_mtime, st.st_size))
            except OSError:
                marks.append((str(p), -1.0, -1))
        return tuple(marks)

    async def _watch_loop(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            if self._watched() != self._marks:
                await asyncio.to_thread(self.reload)

    # ------------------------------------------------------------------------------------------ health

    def probes(self) -> list[Probe]:
        state = self._state
        found = [
            Probe(r.url, r.url.rstrip("/") + "/health", {}) for rs in self._replicas.values() for r in rs
        ]
        for u in state.policy.upstreams:
            key = state.upstream_keys.get(u.name)
            found.append(
                Probe(
                    u.name,
                    u.base_url.rstrip("/") + "/models",
                    {"Authorization": f"Bearer {key}"} if key else {},
                )
            )
        return found

    async def check_health(self) -> None:
        """Check every backend once (the loop does it every `health.interval_s`)."""
        assert self.client is not None
        await self._checks.check(self.client, self.probes(), self._state.policy.health)

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.check_health()
            except Exception:  # a check that breaks must not end the checks
                log.exception("health check pass failed")
            await asyncio.sleep(self._state.policy.health.interval_s)

    # ------------------------------------------------------------------------------------------ HTTP

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_get("/v1/models", self._models, allow_head=False)
        app.router.add_get("/metrics", self._metrics, allow_head=False)
        app.router.add_get("/health", self._health_page, allow_head=False)
        app.on_response_prepare.append(_no_server_header)
        return app

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        state = self._state
        path = request.path
        flight = Flight.begin(self, state, path, request.headers.get("traceparent"))
        tenant = authenticate(state.policy, request.headers.get("authorization"))
        if isinstance(tenant, Refusal):
            return flight.refuse(tenant)
        flight.tenant = tenant
        limit = state.policy.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return flight.refuse(Refusal(413, "body_too_large", f"the body is over {limit} bytes"))
        raw = bytearray()
        while part := await request.content.readany():
            raw += part
            if len(raw) > limit:
                return flight.refuse(Refusal(413, "body_too_large", f"the body is over {limit} bytes"))
        try:
            body = json.loads(raw)
        except ValueError:
            return flight.refuse(Refusal(400, "invalid_json", "the body is not valid JSON"))
        parsed = parse_request(body, request.headers.get(RESIDENCY_HEADER))
        if isinstance(parsed, Refusal):
            return flight.refuse(parsed)
        field = PATHS[path]
        if field not in body:
            return flight.refuse(Refusal(400, "invalid_request", f"{path} takes `{field}`"))
        try:
            digest = prompt_hmac(self.hmac_key, body[field])
        except (TypeError, ValueError):
            return flight.refuse(Refusal(400, "invalid_request", f"`{field}` is not what OpenAI defines"))
        flight.accept(body, parsed, digest)
        decided = plan(state.policy, state.pool, parsed, tenant, self.health())
        if isinstance(decided, Refusal):
            return flight.refuse(decided)
        flight.plan = decided
        refused = await flight.reserve()
        if refused is not None:
            return flight.refuse(refused)
        return await flight.fly(request)

    async def _models(self, request: web.Request) -> web.Response:
        state = self._state
        tenant = authenticate(state.policy, request.headers.get("authorization"))
        if isinstance(tenant, Refusal):
            return refusal_response(tenant)
        created = int(time.time())
        names = []
        for route in state.policy.routes:
            found = resolve_route(route, state.pool, state.policy)[0]
            probe = RouteRequest(model=route.name, prompt="")
            cut = residency_candidates(tenant, probe, found)
            if not isinstance(cut, Refusal) and not isinstance(cost_filter(tenant, cut.kept), Refusal):
                names.append(route.name)
        data = [{"id": n, "object": "model", "created": created, "owned_by": "lifecycle"} for n in names]
        return json_response({"object": "list", "data": data})

    async def _metrics(self, request: web.Request) -> web.Response:
        text, kind = self.metrics.exposition()
        return web.Response(body=text, headers={hdrs.CONTENT_TYPE: kind})

    async def _health_page(self, request: web.Request) -> web.Response:
        health = self.health()
        up = sorted({*(d for d, rs in health.replicas.items() if rs), *health.upstreams})
        return json_response(
            {"status": "ok", "routes": [r.name for r in self._state.policy.routes], "up": up}
        )

    # ------------------------------------------------------------------------------------------ for flights

    def open_flight(self) -> None:
        with self._lock:
            self._open_flights += 1

    def close_flight(self) -> None:
        with self._lock:
            self._open_flights -= 1

    def wait_settled(self, timeout_s: float = 10.0) -> bool:
        """Wait until every request has been settled, audited and counted (they are, just after each answer
        ends). False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._open_flights == 0:
                    return True
            time.sleep(0.01)
        return False


async def _no_server_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Answers name no server software (the backends' `server` headers are not relayed either)."""
    response.headers.popall(hdrs.SERVER, None)
