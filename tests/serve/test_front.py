"""The pool's front door against small real HTTP upstreams: streams pass through as they come, a replica that is
gone is retried elsewhere, bad requests get OpenAI error objects."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from lifecycle.engines.vllm_server import free_port
from lifecycle.serve import front as front_module
from lifecycle.serve.front import Backend, Front


class Upstream:
    """A replica stand-in: answers JSON, or streams two SSE events with a pause the test controls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.release = threading.Event()
        self.seen: list[dict[str, Any]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                upstream.seen.append(body)
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for event in ("data: first\n\n", None, "data: [DONE]\n\n"):
                        if event is None:
                            upstream.release.wait(10)  # held until the client has the first event
                            continue
                        data = event.encode()
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    return
                data = json.dumps({"served_by": upstream.name, "model": body["model"]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def backend(self) -> Backend:
        return Backend(
            url=f"http://127.0.0.1:{self.http.server_address[1]}", deployment="d", replica=self.name
        )

    def stop(self) -> None:
        self.release.set()
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def front() -> Iterator[Front]:
    f = Front()
    yield f
    f.stop()


def test_a_stream_passes_through_as_it_comes(front: Front) -> None:
    upstream = Upstream("a")
    front.set_routes({"m": [upstream.backend]})
    try:
        with requests.post(
            f"{front.url}/v1/chat/completions", json={"model": "m", "stream": True}, stream=True, timeout=10
        ) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line)
            assert first == b"data: first"  # arrived while the upstream still held the rest back
            upstream.release.set()
            rest = [line for line in lines if line]
        assert rest == [b"data: [DONE]"]
        assert response.headers["Content-Type"] == "text/event-stream"
    finally:
        upstream.stop()


def test_a_replica_that_is_gone_is_retried_on_another(front: Front) -> None:
    alive = Upstream("alive")
    gone = Backend(url=f"http://127.0.0.1:{free_port()}", deployment="d", replica="gone")
    front.set_routes({"m": [gone, alive.backend]})
    try:
        served = [
            requests.post(f"{front.url}/v1/completions", json={"model": "m"}, timeout=10) for _ in range(4)
        ]
        assert [r.json()["served_by"] for r in served] == ["alive"] * 4
        assert front.stats.retried >= 1 and front.stats.failed == 0
        # the count drops once the relay's last byte is written: the client may read it a moment earlier
        assert front.drain([alive.backend], timeout_s=5) and front.outstanding(alive.backend) == 0
    finally:
        alive.stop()


def test_bad_requests_get_openai_errors(front: Front, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front_module, "RETRY_PAUSE_S", 0.001)
    gone = Backend(url=f"http://127.0.0.1:{free_port()}", deployment="d", replica="gone")
    front.set_routes({"m": [gone]})
    url = f"{front.url}/v1/completions"
    unknown = requests.post(url, json={"model": "nobody"}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "NotFoundError"
    malformed = requests.post(url, data=b"{not json", timeout=10)
    assert malformed.status_code == 400 and "JSON" in malformed.json()["error"]["message"]
    nameless = requests.post(url, json={"prompt": "x"}, timeout=10)
    assert nameless.status_code == 400
    down = requests.post(url, json={"model": "m"}, timeout=10)
    assert down.status_code == 503 and front.stats.failed == 1
    assert requests.get(f"{front.url}/v1/models", timeout=10).json()["data"][0]["id"] == "m"
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Length", str(front_module.MAX_BODY_BYTES + 1))
    conn.endheaders()
    assert conn.getresponse().status == 413
