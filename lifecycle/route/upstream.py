"""One attempt at one backend, over aiohttp: the request goes out, and either the answer's first byte comes back in
time or the attempt fails with a short error name (`UpstreamFailed`), so that the router may try the next backend
while nothing has reached the client yet.

A non-streamed answer is read whole before the client sees any of it (it is one JSON body, and a replica that dies
while generating it can still be replaced); a stream is handed over after its first chunk and then passed on
chunk by chunk. `StreamFacts` reads the chunks as they go by, keeping only what spans and budgets need (model,
id, finish reasons, usage, a count of content pieces), never the content.

This is the only module that knows the HTTP client: `open_client` makes the router's one connection pool, and
`TRANSPORT_ERRORS` are what a broken connection raises.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

if sys.version_info >= (3, 11):
    from asyncio import timeout as within
else:  # aiohttp depends on async-timeout there; its TimeoutError is asyncio's, caught below as well
    from async_timeout import timeout as within

from lifecycle.route.telemetry import ResponseFacts, error_type, response_facts

# and every 5xx: the next backend may well answer. 401, 403 and 404 from a backend are the router's own
# misconfiguration (a key, a model id), not the client's to see
RETRY_STATUSES = frozenset({401, 403, 404, 408, 429})
MAX_WHOLE_BYTES = 64 * 1024 * 1024  # a non-streamed answer larger than this is an error, not a memory spike
# hop-by-hop headers, and those the router's own server sets
NOT_RELAYED = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "te",
        "trailer",
        "upgrade",
        "server",
        "date",
    }
)
MAX_CONNECTIONS = 1024  # to all backends together
KEEPALIVE_S = 5.0  # an idle connection is closed after this long
# what a connection that fails, breaks off or times out raises (aiohttp's timeouts are ClientErrors too)
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
)

Client = aiohttp.ClientSession


def open_client() -> Client:
    """The router's connection pool, shared by every attempt and health check; call on the router's loop and
    `await client.close()` on it. No proxy or netrc from the environment: backends are reached directly, and
    nothing is read from disk per request. Bodies are passed on as they come (no decompression; the router
    asks for `identity` anyway)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=KEEPALIVE_S
        ),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
        trust_env=False,
    )


class UpstreamFailed(Exception):
    """The attempt failed before any byte could reach the client; `kind` is the `error.type` (a status code,
    "timeout", "connect" or an exception class name), never a message."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class Deadlines:
    connect_s: float
    first_byte_s: float
    total_s: float


@dataclass
class Whole:
    """A complete answer (non-streamed, or an error the client must see, such as a 400 from the backend)."""

    status: int
    headers: dict[str, str]
    body: bytes
    first_byte_s: float


@dataclass
class Stream:
    """A streamed answer whose first chunk has arrived; `rest()` yields the others until the total deadline."""

    status: int
    headers: dict[str, str]
    first: bytes
    first_byte_s: float
    response: aiohttp.ClientResponse
    chunks: AsyncIterator[bytes]
    deadline: float  # time.monotonic() by which the whole answer must be in

    async def next_chunk(self) -> bytes | None:
        """The next chunk that has something in it; None at the end."""
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the answer took longer than the total timeout")
            async with within(left):  # asyncio's own: one timer handle, no task or scope machinery
                try:
                    chunk = await self.chunks.__anext__()
                except StopAsyncIteration:
                    return None
            if chunk:
                return chunk

    async def rest(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    def close(self) -> None:
        """Give the connection back: kept alive when the answer was read to its end, closed otherwise (so that a
        backend whose client went away stops generating)."""
        self.response.release()


async def attempt(
    client: Client,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    deadlines: Deadlines,
    *,
    stream: bool,
) -> Whole | Stream:
    """POST `body` to `url`. Returns the answer once its first byte is here (a stream) or all of it (otherwise);
    raises UpstreamFailed for a connect error, a timeout before the first byte, or a retryable status."""
    started = time.monotonic()
    # sock_read: the longest wait for any read, as the first byte's; the total deadline is kept here
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=deadlines.connect_s,
        sock_connect=deadlines.connect_s,
        sock_read=deadlines.first_byte_s,
    )
    response: aiohttp.ClientResponse | None = None
    try:
        async with within(deadlines.first_byte_s):
            response = await client.post(url, data=body, headers=headers, timeout=timeout)
            status = response.status
            if status in RETRY_STATUSES or status >= 500:
                raise UpstreamFailed(str(status))
            chunks = response.content.iter_any()
            first = b""
            async for chunk in chunks:
                if chunk:
                    first = chunk
                    break
        first_byte_s = time.monotonic() - started
        kept = _relayed(response.headers)
        if stream and status == 200 and first:
            return Stream(status, kept, first, first_byte_s, response, chunks, started + deadlines.total_s)
        parts = [first]
        size = len(first)
        async with within(max(0.001, started + deadlines.total_s - time.monotonic())):
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size > MAX_WHOLE_BYTES:
                    raise UpstreamFailed("too_large")
        response.release()
        return Whole(status, kept, b"".join(parts), first_byte_s)
    except UpstreamFailed:
        if response is not None:
            response.close()
        raise
    except TRANSPORT_ERRORS as exc:
        if response is not None:
            response.close()
        raise UpstreamFailed(failure_name(exc)) from None
    except BaseException:  # cancelled (the client went away): the connection is not given back half-read
        if response is not None:
            response.close()
        raise


def _relayed(headers: Mapping[str, str]) -> dict[str, str]:
    """The backend's headers the client gets: hop-by-hop ones dropped, repeated ones joined as HTTP allows."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered not in NOT_RELAYED:
            kept[lowered] = f"{kept[lowered]}, {value}" if lowered in kept else value
    return kept


def failure_name(exc: BaseException) -> str:
    """`error.type` for a failed attempt: timeout, connect, or the exception's class."""
    if isinstance(
        exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | ConnectionRefusedError
    ):
        return "connect"
    return error_type(exc=exc) or "error"


@dataclass
class StreamFacts:
    """What passes by in an SSE stream, minus the content: fed each chunk as it is relayed."""

    sse: bool = True
    facts: list[dict[str, Any]] = field(default_factory=list)  # reduced chunks: model, id, finish, usage
    pieces: int = 0  # chunks that carried some content: the output token count when no usage comes
    _tail: bytes = b""

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        found = event.get("choices")
        choices: list[Any] = found if isinstance(found, list) else []
        reduced: dict[str, Any] = {
            "model": event.get("model"),
            "id": event.get("id"),
            "choices": [{"finish_reason": c.get("finish_reason")} for c in choices if isinstance(c, dict)],
        }
        if isinstance(event.get("usage"), dict):
            reduced["usage"] = event["usage"]
        self.facts.append(reduced)
        if len(self.facts) > 4:  # model and id from the first, finish and usage from the last ones
            del self.facts[1]
        for c in choices:
            if isinstance(c, dict) and _has_content(c):
                self.pieces += 1

    def response(self) -> ResponseFacts:
        return response_facts(self.facts)


def _has_content(choice: Mapping[str, Any]) -> bool:
    delta = choice.get("delta")
    if isinstance(delta, Mapping):
        return bool(delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"))
    return bool(choice.get("text"))


def whole_facts(body: bytes) -> ResponseFacts | None:
    """The facts of a non-streamed JSON answer, or None when it is not one."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return response_facts(parsed) if isinstance(parsed, dict) else None


def sse_error_event(kind: str) -> bytes:
    """The event that ends a stream the backend broke off: an OpenAI error object, as vLLM sends one."""
    error = {
        "message": f"the backend stopped mid-answer ({kind}); the answer is incomplete",
        "type": "APIError",
        "param": None,
        "code": kind,
    }
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
