"""Stand-in backends for the router's tests: small real HTTP servers speaking OpenAI's chat and text completions
(a JSON body with usage, or server-sent events with usage in the last chunk when `stream_options.include_usage`
asks for it), `GET /health` and `GET /v1/models` (with a key when one is set). Each answers by echoing the prompt
word by word, and can be told to fail: a status, a delay before the first byte, or a stream that breaks off."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class StandIn:
    """`behaviour`: "ok", "status:CODE", "slow:SECONDS" (before any byte), "break" (a stream stops after two
    chunks, the connection dropped). `bill_output` overrides the completion tokens reported in usage."""

    def __init__(self, name: str, *, key: str | None = None) -> None:
        self.name = name
        self.key = key
        self.behaviour = "ok"
        self.healthy = True
        self.bill_output: int | None = None
        self.requests: list[Seen] = []
        self.connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._http = _Quiet(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.05,), name=f"standin-{name}", daemon=True
        )
        self._thread.start()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def completions(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.requests if s.path.endswith("completions")]

    def stop(self) -> None:
        """Stop listening and drop every open connection (kept-alive ones included): as a killed server."""
        self._http.shutdown()
        self._http.server_close()
        with self._lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer (the router closing a stream) is expected here


def _prompt_words(body: dict[str, Any]) -> list[str]:
    if "messages" in body:
        text = " ".join(str(m.get("content", "")) for m in body["messages"])
    else:
        prompt = body.get("prompt", "")
        text = prompt if isinstance(prompt, str) else " ".join(prompt)
    return text.split()


def _handler(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with standin._lock:
                standin.connections.add(self.connection)

        def do_GET(self) -> None:
            if self.path == "/health":
                return self._json(200 if standin.healthy else 503, {})
            if self.path == "/v1/models":
                if standin.key and self.headers.get("Authorization") != f"Bearer {standin.key}":
                    return self._json(401, {"error": {"message": "bad key"}})
                if not standin.healthy:
                    return self._json(503, {})
                return self._json(200, {"object": "list", "data": [{"id": standin.name, "object": "model"}]})
            return self._json(404, {})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            standin.record(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            behaviour = standin.behaviour
            if behaviour.startswith("status:"):
                return self._json(int(behaviour.split(":")[1]), {"error": {"message": "stand-in failure"}})
            if behaviour.startswith("slow:"):
                time.sleep(float(behaviour.split(":")[1]))
            chat = self.path.endswith("/chat/completions")
            words = ["echo", *_prompt_words(body)]
            usage = {
                "prompt_tokens": len(words) - 1,
                "completion_tokens": standin.bill_output if standin.bill_output is not None else len(words),
            }
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            model = body.get("model", standin.name)
            if not body.get("stream"):
                text = " ".join(words)
                choice = (
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    if chat
                    else {"index": 0, "text": text, "finish_reason": "stop"}
                )
                kind = "chat.completion" if chat else "text_completion"
                return self._json(
                    200, {"id": "cmpl-1", "object": kind, "model": model, "choices": [choice], "usage": usage}
                )
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, word in enumerate(words):
                if behaviour == "break" and i == 2:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # no terminating chunk: the stream breaks off
                    return None
                piece = {"delta": {"content": word + " "}} if chat else {"text": word + " "}
                last = i == len(words) - 1
                event = {
                    "id": "cmpl-1",
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "model": model,
                    "choices": [{"index": 0, **piece, "finish_reason": "stop" if last else None}],
                }
                self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
                time.sleep(0.01)
            if (body.get("stream_options") or {}).get("include_usage"):
                event = {"id": "cmpl-1", "model": model, "choices": [], "usage": usage}
                self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return None

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
