"""What the router adds to a request: the same request mix sent straight to a fast stand-in upstream and through
the real Router in front of it (and, with --vllm-router, through vLLM's Rust router too), side by side in one run.

Closed loop: N requests at concurrency 1 and 8, latency p50/p99. Open loop: a fixed rate for a fixed time (latency
counted from each request's planned start, so that a slow path cannot hide its queue), achieved rate, p50/p99,
errors. The table gives each path's figures, the ratio to direct and the added latency (path minus direct).

    .venv/bin/python bench/router_overhead.py [--requests 400] [--rate 200] [--seconds 10] [--stream-every 4]
    .venv/bin/python bench/router_overhead.py --vllm-router /tmp/vr/bin/vllm-router   # pip install vllm-router

The upstream, the router and the load generator each run in a process of their own. The upstream answers at once
(a JSON body, or a stream of --chunks events in one write), so what is measured is the path, not a model. The
router runs as `lifecycle serve` builds it: one tenant, one upstream route, audit records fsynced, no tracing
exporter. Figures from a busy or small machine are noisy: compare columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

KEY = "bench-key"
MODEL = "bench-model"

# ------------------------------------------------------------------------------------------ the upstream


class _Upstream(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive server speaking enough of OpenAI's API: chat completions (JSON or SSE),
    GET /v1/models and GET /health."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(method, path.split("?")[0], body)

    def _answer(self, method: str, path: str, body: bytes) -> None:
        if method == "GET" and path in ("/health", "/v1/health"):
            return self._json(200, {})
        if method == "GET" and path == "/v1/models":
            return self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        if method != "POST" or not path.endswith("/chat/completions"):
            return self._json(404, {"error": {"message": "not found"}})
        request = json.loads(body or b"{}")
        model = request.get("model", MODEL)
        usage = {"prompt_tokens": 8, "completion_tokens": self.chunks, "total_tokens": 8 + self.chunks}
        if not request.get("stream"):
            message = {"role": "assistant", "content": " ".join(["word"] * self.chunks)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            answer = {"id": "c1", "object": "chat.completion", "model": model, "choices": [choice]}
            return self._json(200, {**answer, "usage": usage})
        out = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"]
        for i in range(self.chunks):
            last = i == self.chunks - 1
            choice = {"index": 0, "delta": {"content": "word "}, "finish_reason": "stop" if last else None}
            event = {"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [choice]}
            out.append(_chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
        out.append(
            _chunk(b"data: " + json.dumps({"id": "c1", "choices": [], "usage": usage}).encode() + b"\n\n")
        )
        out.append(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        assert self.transport is not None
        self.transport.write(b"".join(out))
        return None

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
        assert self.transport is not None
        self.transport.write(head.encode() + data)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def serve_upstream(conn: Connection, chunks: int) -> None:
    """Child process: serve the stand-in upstream, send its root URL, stop when told."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Upstream(chunks), "127.0.0.1", 0, backlog=2048)
        conn.send(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        await loop.run_in_executor(None, conn.recv)
        server.close()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ the router


def policy_text(base_url: str) -> str:
    from lifecycle.route.policy import hash_key

    return f"""\
tenants:
  - name: bench
    keys: [{hash_key(KEY)}]
    cost_classes: [hosted]
    residency: any
upstreams:
  - name: fast
    cost_class: hosted
    provider: openai
    base_url: {base_url}
    model: {MODEL}
    region: us-east-1
    price: {{input_per_million: 1, output_per_million: 1}}
routes:
  - name: chat
    targets: [fast]
timeouts: {{connect_s: 2, first_byte_s: 10, total_s: 30}}
health: {{interval_s: 5, timeout_s: 2, unhealthy_after: 3, healthy_after: 1}}
"""


def serve_router(conn: Connection, upstream: str, folder: str, durability: str) -> None:
    """Child process: the real Router in front of `upstream`, as `lifecycle serve` starts it."""
    from lifecycle.pool.schema import Pool
    from lifecycle.route.audit import AuditLog
    from lifecycle.route.load import load_policy
    from lifecycle.route.server import Router

    where = Path(folder)
    (where / "routing.yaml").write_text(policy_text(upstream + "/v1"))
    audit = AuditLog(where / "audit.jsonl", durability=durability)  # type: ignore[arg-type]
    router = Router(
        load_policy(where / "routing.yaml", Pool()),
        audit=audit,
        hmac_key=b"bench-hmac-key-of-32-bytes-long!",
        pool=Pool(),
        watch_every_s=None,
    ).start()
    conn.send(router.url)
    conn.recv()
    router.stop()
    audit.close()


def start_vllm_router(binary: str, upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    """vLLM's Rust router, round robin over the one upstream as its only worker."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", upstream]
        + ["--policy", "round_robin", "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vllm-router exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=1) as answer:
                if answer.status == 200:
                    return process, url
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("vllm-router did not answer within 60 s")


# ------------------------------------------------------------------------------------------ the load


@dataclass
class Figures:
    latencies: list[float]
    errors: int
    seconds: float

    def p(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def bodies(n: int, stream_every: int) -> list[bytes]:
    """The request mix: chat completions, every `stream_every`-th one streamed (0: none)."""
    made = []
    for i in range(n):
        stream = bool(stream_every) and i % stream_every == stream_every - 1
        body: dict[str, Any] = {
            "model": "chat",
            "messages": [{"role": "user", "content": f"request {i}: say something short"}],
            "max_tokens": 16,
        }
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        made.append(json.dumps(body).encode())
    return made


async def one(session: Any, url: str, body: bytes) -> bool:
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    try:
        async with session.post(url, data=body, headers=headers) as answer:
            await answer.read()
            return bool(answer.status == 200)
    except Exception:
        return False


async def closed_loop(session: Any, url: str, mix: list[bytes], concurrency: int) -> Figures:
    latencies: list[float] = []
    errors = 0
    turn = iter(range(len(mix)))

    async def worker() -> None:
        nonlocal errors
        for i in turn:
            started = time.perf_counter()
            if await one(session, url, mix[i]):
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Figures(latencies, errors, time.perf_counter() - began)


async def open_loop(session: Any, url: str, mix: list[bytes], rate: float, seconds: float) -> Figures:
    latencies: list[float] = []
    errors = 0

    async def timed(planned: float, body: bytes) -> None:
        nonlocal errors
        if await one(session, url, body):
            latencies.append(time.perf_counter() - planned)  # from the planned start: queueing counts
        else:
            errors += 1

    tasks = []
    began = time.perf_counter()
    for i in range(int(rate * seconds)):
        planned = began + i / rate
        wait = planned - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(timed(planned, mix[i % len(mix)])))
    await asyncio.gather(*tasks)
    return Figures(latencies, errors, time.perf_counter() - began)


async def measure(paths: dict[str, str], args: argparse.Namespace) -> dict[str, dict[str, Figures]]:
    import aiohttp

    mix = bodies(args.requests, args.stream_every)
    found: dict[str, dict[str, Figures]] = {name: {} for name in paths}
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for url in paths.values():  # warm up: connections, the router's first-request costs
            await closed_loop(session, url, mix[: min(len(mix), 40)], 4)
        for concurrency in args.concurrency:
            for name, url in paths.items():
                found[name][f"closed c={concurrency}"] = await closed_loop(session, url, mix, concurrency)
        if args.seconds > 0:
            label = f"open {args.rate:g} rps"
            for name, url in paths.items():
                found[name][label] = await open_loop(session, url, mix, args.rate, args.seconds)
    return found


# ------------------------------------------------------------------------------------------ the table


def table(found: dict[str, dict[str, Figures]]) -> str:
    names = list(found)
    direct = found[names[0]]
    head = ["scenario", "figure", *names]
    for name in names[1:]:
        head += [f"{name}/direct", f"{name}-direct"]
    rows = [head]
    for scenario, base in direct.items():
        for figure in ("p50 ms", "p99 ms", "req/s", "errors"):
            row = [scenario, figure]

            def value(f: Figures, figure: str = figure) -> float:
                return {"p50 ms": f.p(0.5), "p99 ms": f.p(0.99), "req/s": f.rate, "errors": f.errors}[figure]

            row += [
                f"{value(found[n][scenario]):.2f}" if figure != "errors" else str(found[n][scenario].errors)
                for n in names
            ]
            for name in names[1:]:
                mine, theirs = value(found[name][scenario]), value(base)
                if figure == "errors":
                    row += ["", ""]
                else:
                    row += [f"{mine / theirs:.2f}x" if theirs else "-", f"{mine - theirs:+.2f}"]
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="requests per closed-loop run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="open-loop duration (0: none)")
    parser.add_argument("--stream-every", type=int, default=4, help="every n-th request streams (0: none)")
    parser.add_argument("--chunks", type=int, default=8, help="content events per answer")
    parser.add_argument("--durability", choices=["fsync", "flush"], default="fsync", help="audit log writes")
    parser.add_argument("--vllm-router", metavar="BINARY", nargs="?", const="vllm-router", default=None)
    args = parser.parse_args()

    spawn = multiprocessing.get_context("spawn")
    folder = tempfile.mkdtemp(prefix="router-bench-")
    children: list[tuple[Any, Connection]] = []
    vllm: subprocess.Popen[bytes] | None = None
    try:
        mine, theirs = spawn.Pipe()
        upstream_process = spawn.Process(target=serve_upstream, args=(theirs, args.chunks), daemon=True)
        upstream_process.start()
        children.append((upstream_process, mine))
        upstream = mine.recv()
        mine, theirs = spawn.Pipe()
        router_process = spawn.Process(target=serve_router, args=(theirs, upstream, folder, args.durability))
        router_process.start()
        children.append((router_process, mine))
        router = mine.recv()
        paths = {"direct": upstream + "/v1/chat/completions", "router": router + "/v1/chat/completions"}
        if args.vllm_router:
            binary = shutil.which(args.vllm_router) or args.vllm_router
            vllm, vllm_url = start_vllm_router(binary, upstream)
            paths["vllm-router"] = vllm_url + "/v1/chat/completions"
        found = asyncio.run(measure(paths, args))
    finally:
        if vllm is not None:
            vllm.terminate()
            vllm.wait(10)
        for process, conn in reversed(children):
            conn.send("stop")
            process.join(30)
        shutil.rmtree(folder, ignore_errors=True)
    mix = f"every {args.stream_every}th streamed" if args.stream_every else "none streamed"
    print(
        f"{args.requests} requests per closed-loop run ({mix}, {args.chunks} chunks), open loop "
        f"{args.rate:g} rps for {args.seconds:g} s; {os.cpu_count()} CPUs; audit {args.durability}"
    )
    print(table(found))
    print("latency in ms; x/direct: ratio; x-direct: added ms (req/s: added rate)")


if __name__ == "__main__":
    main()
