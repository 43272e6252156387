"""The pool's front door: one stable OpenAI-compatible endpoint in front of every replica, so that clients keep one
address while the pool starts, replaces and stops servers behind it.

The runner hands it routes (served name -> replicas) and swaps them atomically; a request takes the replica with
the fewest requests in flight. A request that cannot reach its replica before any byte came back (a server that
just stopped, a closed keep-alive connection) is sent again, to another replica where there is one, under the
routes of that moment; a response that has begun is passed through as it comes (server-sent events included),
never replayed. Stopping a replica goes: take it out of the routes, `drain` (wait for its requests in flight),
stop. Errors are OpenAI error objects.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlparse

RETRY_ATTEMPTS = 20  # over about RETRY_ATTEMPTS * RETRY_PAUSE_S: long enough for a route swap to land
RETRY_PAUSE_S = 0.05
UPSTREAM_TIMEOUT_S = 600.0
MAX_BODY_BYTES = 32 * 1024 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"}
_RETRYABLE = (
    ConnectionError,
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    TimeoutError,
    OSError,
)


@dataclass(frozen=True)
class Backend:
    """One replica as the front sees it."""

    url: str  # http://host:port
    deployment: str
    replica: str  # a name for logs and status: deployment/index


@dataclass
class FrontStats:
    requests: int = 0
    failed: int = 0  # answered with an error the front made (no replica reachable), not an upstream's error
    retried: int = 0


class HasUrl(Protocol):
    @property
    def url(self) -> str: ...


class InFlight:
    """Requests in flight per (replica url, model), counted under `_lock`: what draining a replica waits on.
    Shared by the front and the router (lifecycle.route.server), which count in their own request paths."""

    _lock: threading.Lock
    _outstanding: dict[tuple[str, str], int]

    def outstanding(self, backend: HasUrl, model: str | None = None) -> int:
        """Requests in flight on `backend` (for `model` only, when given)."""
        with self._lock:
            return sum(
                n
                for (url, name), n in self._outstanding.items()
                if url == backend.url and model in (None, name)
            )

    def drain(
        self, backends: Iterable[HasUrl], timeout_s: float = 120.0, *, model: str | None = None
    ) -> bool:
        """Wait until none of `backends` has a request in flight (for `model` only, when given); they must be
        out of the routes (for that model) already. False on timeout."""
        urls = {b.url for b in backends}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                busy = any(url in urls and model in (None, name) for (url, name) in self._outstanding)
            if not busy:
                return True
            time.sleep(0.02)
        return False


class Front(InFlight):
    """The stable endpoint. `set_routes` swaps the routing table; `drain` waits for a replica's requests."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._routes: Mapping[str, tuple[Backend, ...]] = {}
        self._outstanding: dict[tuple[str, str], int] = {}  # (replica url, model) -> requests in flight
        self._lock = threading.Lock()
        self._turn = 0
        self.stats = FrontStats()
        self._local = threading.local()
        self._http = ThreadingHTTPServer((host, port), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, name="pool-front", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._http.server_address[0])
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}"

    @property
    def routes(self) -> Mapping[str, tuple[Backend, ...]]:
        return self._routes

    def set_routes(self, routes: Mapping[str, Sequence[Backend]], *, pool: object = None) -> None:
        """Replace the routing table at once: a request sees the old table or the new, never a mix. (`pool`,
        the pool the routes come from, matters to the router, not here: the front routes by served name.)"""
        table = {name: tuple(backends) for name, backends in routes.items() if backends}
        with self._lock:
            self._routes = table

    def stop(self) -> None:
        if self._thread.is_alive():
            self._http.shutdown()
            self._thread.join()
        self._http.server_close()

    # ---- called from the handler's threads

    def _pick(self, model: str, tried: set[str]) -> Backend | None:
        with self._lock:
            backends = self._routes.get(model, ())
            fresh = [b for b in backends if b.url not in tried] or list(backends)
            if not fresh:
                return None
            load = {b.url: 0 for b in fresh}
            for (url, _), n in self._outstanding.items():
                if url in load:
                    load[url] += n
            self._turn += 1  # ties go round the replicas
            n = len(fresh)
            choice = min(enumerate(fresh), key=lambda ib: (load[ib[1].url], (ib[0] - self._turn) % n))[1]
            key = (choice.url, model)
            self._outstanding[key] = self._outstanding.get(key, 0) + 1
            return choice

    def _done(self, backend: Backend, model: str) -> None:
        key = (backend.url, model)
        with self._lock:
            left = self._outstanding.get(key, 0) - 1
            if left > 0:
                self._outstanding[key] = left
            else:
                self._outstanding.pop(key, None)

    def _connection(self, url: str, fresh: bool = False) -> http.client.HTTPConnection:
        pool: dict[str, http.client.HTTPConnection] = getattr(self._local, "pool", None) or {}
        self._local.pool = pool
        conn = pool.get(url)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            parsed = urlparse(url)
            conn = http.client.HTTPConnection(
                parsed.hostname or "127.0.0.1", parsed.port, timeout=UPSTREAM_TIMEOUT_S
            )
            pool[url] = conn
        return conn

    def proxy(self, handler: BaseHTTPRequestHandler, body: bytes, model: str) -> None:
        with self._lock:
            self.stats.requests += 1
        tried: set[str] = set()
        for attempt in range(RETRY_ATTEMPTS):
            backend = self._pick(model, tried)
            if backend is None:
                if model not in self._routes and attempt == 0:
                    return _error(handler, 404, f"The model `{model}` does not exist.", "NotFoundError")
                time.sleep(RETRY_PAUSE_S)
                continue
            try:
                response = self._send(backend, handler, body, fresh=attempt > 0)
            except _RETRYABLE:
                self._done(backend, model)
                tried.add(backend.url)
                with self._lock:
                    self.stats.retried += 1
                time.sleep(RETRY_PAUSE_S if attempt else 0)
                continue
            try:
                _relay(handler, response)
            finally:
                self._done(backend, model)
            return None
        with self._lock:
            self.stats.failed += 1
        return _error(handler, 503, f"no replica of `{model}` could be reached", "ServiceUnavailableError")

    def _send(
        self, backend: Backend, handler: BaseHTTPRequestHandler, body: bytes, fresh: bool
    ) -> http.client.HTTPResponse:
        conn = self._connection(backend.url, fresh)
        headers = {
            k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"
        }
        headers["Content-Length"] = str(len(body))
        try:
            conn.request(handler.command, handler.path, body=body, headers=headers)
            return conn.getresponse()
        except Exception:
            conn.close()
            raise

    def models_body(self) -> dict[str, Any]:
        created = int(time.time())
        names = sorted(self._routes)
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": created, "owned_by": "lifecycle"} for n in names
            ],
        }


def _relay(handler: BaseHTTPRequestHandler, response: http.client.HTTPResponse) -> None:
    """Pass the upstream's answer through: whole when it has a length, chunk by chunk when it streams."""
    streaming = response.getheader("Content-Length") is None
    handler.send_response(response.status)
    for key, value in response.getheaders():
        if key.lower() not in HOP_BY_HOP:
            handler.send_header(key, value)
    if not streaming:
        data = response.read()
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        return
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    while True:
        chunk = response.read1(65536)
        if not chunk:
            break
        handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        handler.wfile.flush()
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()


def _error(handler: BaseHTTPRequestHandler, status: int, message: str, kind: str) -> None:
    _json(handler, status, {"error": {"message": message, "type": kind, "param": None, "code": status}})


def _json(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _handler(front: Front) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/health":
                _json(self, 200, {"status": "ok", "models": sorted(front.routes)})
            elif path == "/v1/models":
                _json(self, 200, front.models_body())
            else:
                _error(self, 404, f"{path} is not served here", "NotFoundError")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                return _error(self, 413, f"the body is over {MAX_BODY_BYTES} bytes", "BadRequestError")
            body = self.rfile.read(length)
            if not self.path.startswith("/v1/"):
                return _error(self, 404, f"{self.path} is not served here", "NotFoundError")
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                return _error(self, 400, "the body is not valid JSON", "BadRequestError")
            model = request.get("model") if isinstance(request, dict) else None
            if not isinstance(model, str) or not model:
                return _error(self, 400, "the request names no `model`", "BadRequestError")
            try:
                front.proxy(self, body, model)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away; nothing to answer
            return None

        def log_message(self, format: str, *args: Any) -> None:  # no access log: prompts stay out of logs
            pass

    return Handler
