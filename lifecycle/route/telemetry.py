"""What the router tells the outside about a request, built by pure functions: span attributes for each
upstream attempt (OpenTelemetry GenAI conventions plus `lifecycle.*`), the prompt's keyed HMAC, W3C
`traceparent` for vLLM's span to nest under ours, and Prometheus metric definitions with bounded labels.

Nothing here takes or returns prompt or completion text: request and response bodies go in, only counts,
names and an HMAC come out. Content attributes (`gen_ai.input.messages` ...) are opt-in in the conventions and
never set here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from lifecycle.errors import UserInputError

AttributeValue = str | bool | int | float | Sequence[str]
Operation = Literal["chat", "text_completion"]

MIN_HMAC_KEY_BYTES = 16
SPAN_KIND = "CLIENT"
# Attributes the conventions define for content: never set, whatever is configured
CONTENT_ATTRIBUTES = frozenset(
    {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.prompt",
        "gen_ai.completion",
        "gen_ai.tool.definitions",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "gen_ai.retrieval.query.text",
        "gen_ai.retrieval.documents",
    }
)
_NAME = re.compile(r"^[A-Za-z0-9_.:/@-]{1,128}$")  # ids and names fit for an attribute; text does not


# ---------------------------------------------------------------- prompt HMAC


def prompt_hmac(key: bytes, prompt: str | Sequence[Any] | Mapping[str, Any]) -> str:
    """HMAC-SHA256 of the canonical prompt, hex: equal prompts match, and without the key a short prompt
    cannot be found by guessing (a plain hash can).

    Takes a completion prompt (a string, or a list of strings or token ids) or chat messages (a list of
    mappings; key order and Unicode normalisation do not matter). A chat and a completion never collide.
    """
    if len(key) < MIN_HMAC_KEY_BYTES:
        raise UserInputError(f"the prompt HMAC key needs at least {MIN_HMAC_KEY_BYTES} bytes; got {len(key)}")
    return hmac.new(key, canonical_prompt(prompt), hashlib.sha256).hexdigest()


def hmac_key_id(key: bytes) -> str:
    """A name for the key that reveals nothing of it, recorded beside each HMAC so that a rotation is visible."""
    return hmac.new(key, b"lifecycle prompt hmac key id", hashlib.sha256).hexdigest()[:16]


def canonical_prompt(prompt: str | Sequence[Any] | Mapping[str, Any]) -> bytes:
    is_chat = not isinstance(prompt, str | Mapping) and any(isinstance(m, Mapping) for m in prompt)
    kind = "chat" if is_chat else "completion"
    body = json.dumps(
        _nfc(prompt), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return f"lifecycle.prompt.v1\0{kind}\0{body}".encode()


def _nfc(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, Mapping):
        return {str(k): _nfc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nfc(v) for v in value]
    return value


# ---------------------------------------------------------------- facts from bodies


@dataclass(frozen=True)
class RequestFacts:
    """What a span may say about an OpenAI-style request: no content."""

    operation: Operation
    model: str
    stream: bool
    output_type: str | None  # "json" for response_format, "text" otherwise
    max_tokens: int | None
    temperature: float | None
    top_p: float | None


@dataclass(frozen=True)
class ResponseFacts:
    """What a span may say about a response (a body, or the chunks of a stream): no content."""

    model: str | None
    response_id: str | None
    finish_reasons: tuple[str, ...]
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None


def request_facts(body: Mapping[str, Any]) -> RequestFacts:
    """Read an OpenAI `/v1/chat/completions` or `/v1/completions` request body (chat when it has messages)."""
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return RequestFacts(
        operation="chat" if "messages" in body else "text_completion",
        model=str(body.get("model", "")),
        stream=body.get("stream") is True,
        output_type="json" if kind in ("json_object", "json_schema") else "text",
        max_tokens=max_tokens if _is_int(max_tokens) else None,
        temperature=_number(body.get("temperature")),
        top_p=_number(body.get("top_p")),
    )


def response_facts(body: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> ResponseFacts:
    """Read a response body, or the parsed chunks of a stream (usage from the chunk that carries it)."""
    chunks = [body] if isinstance(body, Mapping) else list(body)
    model = next((c["model"] for c in chunks if isinstance(c.get("model"), str)), None)
    response_id = next((c["id"] for c in chunks if isinstance(c.get("id"), str)), None)
    reasons: list[str] = []
    usage: Mapping[str, Any] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            reason = choice.get("finish_reason") if isinstance(choice, Mapping) else None
            if isinstance(reason, str) and _NAME.match(reason):
                reasons.append(reason)
        if isinstance(chunk.get("usage"), Mapping):
            usage = chunk["usage"]
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return ResponseFacts(
        model=model if model and _NAME.match(model) else None,
        response_id=response_id if response_id and _NAME.match(response_id) else None,
        finish_reasons=tuple(reasons),
        input_tokens=usage.get("prompt_tokens") if _is_int(usage.get("prompt_tokens")) else None,
        output_tokens=usage.get("completion_tokens") if _is_int(usage.get("completion_tokens")) else None,
        cache_read_tokens=cached if _is_int(cached) else None,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- spans


@dataclass(frozen=True)
class Served:
    """What the platform knows about the backend and request beyond the conventions (`lifecycle.*`)."""

    route: str
    tenant: str
    cost_class: str
    residency: str  # the request's residency rule
    backend: str
    backend_residency: str
    region: str | None
    model_name: str | None
    model_version: int | None
    quantization_scheme: str | None
    quantization_config_sha256: str | None
    prompt_hmac: str
    hmac_key_id: str


def span_name(request: RequestFacts) -> str:
    """`{gen_ai.operation.name} {gen_ai.request.model}`, as the conventions name an inference span."""
    return f"{request.operation} {request.model}".strip()


def error_type(status: int | None = None, exc: BaseException | None = None) -> str | None:
    """`error.type`: the HTTP status for an upstream's error answer, the exception's class otherwise."""
    if exc is not None:
        if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
            return "timeout"
        return type(exc).__qualname__
    if status is not None and status >= 400:
        return str(status)
    return None


def attempt_attributes(
    request: RequestFacts,
    served: Served,
    *,
    provider: str,
    server_address: str,
    server_port: int | None,
    attempt: int,
    response: ResponseFacts | None = None,
    error: str | None = None,
    time_to_first_chunk_s: float | None = None,
    cost_usd: Decimal | None = None,
) -> dict[str, AttributeValue]:
    """The attributes of the span for one upstream attempt (1 is the first; a fallback is 2, 3...)."""
    if error is not None and not _NAME.match(error):
        raise ValueError("error.type is a short name (error_type()), never a message")
    attrs: dict[str, AttributeValue | None] = {
        "gen_ai.operation.name": request.operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request.model or None,
        "gen_ai.request.stream": request.stream,
        "gen_ai.output.type": request.output_type,
        "gen_ai.request.max_tokens": request.max_tokens,
        "gen_ai.request.temperature": request.temperature,
        "gen_ai.request.top_p": request.top_p,
        "server.address": server_address,
        "server.port": server_port,
        "error.type": error,
        "lifecycle.route": served.route,
        "lifecycle.tenant": served.tenant,
        "lifecycle.cost_class": served.cost_class,
        "lifecycle.residency": served.residency,
        "lifecycle.backend": served.backend,
        "lifecycle.backend.residency": served.backend_residency,
        "lifecycle.backend.region": served.region,
        "lifecycle.model.name": served.model_name,
        "lifecycle.model.version": served.model_version,
        "lifecycle.quantization.scheme": served.quantization_scheme,
        "lifecycle.quantization.config_sha256": served.quantization_config_sha256,
        "lifecycle.prompt.hmac": served.prompt_hmac,
        "lifecycle.prompt.hmac_key_id": served.hmac_key_id,
        "lifecycle.attempt": attempt,
        "lifecycle.cost.usd": float(cost_usd) if cost_usd is not None else None,
    }
    if response is not None:
        attrs |= {
            "gen_ai.response.model": response.model,
            "gen_ai.response.id": response.response_id,
            "gen_ai.response.finish_reasons": response.finish_reasons or None,
            "gen_ai.usage.input_tokens": response.input_tokens,
            "gen_ai.usage.output_tokens": response.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": response.cache_read_tokens,
        }
    if time_to_first_chunk_s is not None:
        attrs["gen_ai.response.time_to_first_chunk"] = time_to_first_chunk_s
    clean = {key: value for key, value in attrs.items() if value is not None}
    leaked = CONTENT_ATTRIBUTES & clean.keys()
    if leaked:  # cannot happen from the table above; guards a later edit
        raise ValueError(f"content attributes are never set: {sorted(leaked)}")
    return clean


# ---------------------------------------------------------------- W3C trace context


@dataclass(frozen=True)
class TraceContext:
    trace_id: str  # 32 lowercase hex, not all zeros
    span_id: str  # 16 lowercase hex, not all zeros
    sampled: bool


_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def parse_traceparent(header: str | None) -> TraceContext | None:
    """The incoming `traceparent`, or None when absent or invalid (then start a new trace, as W3C says)."""
    if not header:
        return None
    match = _TRACEPARENT.match(header.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceContext(trace_id=trace_id, span_id=span_id, sampled=bool(int(flags, 16) & 1))


def format_traceparent(context: TraceContext) -> str:
    """The version-00 header for `context`: pass it to vLLM so that its request span nests under ours."""
    return f"00-{context.trace_id}-{context.span_id}-{'01' if context.sampled else '00'}"


def child_context(parent: TraceContext | None, *, sampled: bool = True) -> TraceContext:
    """A new span's context: the parent's trace (and sampling) with a fresh span id, or a new trace."""
    span_id = _nonzero_hex(8)
    if parent is None:
        return TraceContext(trace_id=_nonzero_hex(16), span_id=span_id, sampled=sampled)
    return TraceContext(trace_id=parent.trace_id, span_id=span_id, sampled=parent.sampled)


def _nonzero_hex(nbytes: int) -> str:
    while True:
        value = secrets.token_hex(nbytes)
        if value.strip("0"):
            return value
