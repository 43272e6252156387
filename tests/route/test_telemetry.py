"""Telemetry built from requests: GenAI span attributes, the prompt's keyed HMAC, W3C trace context, bounded
metric labels; and a marker planted in prompts and completions found in none of what the platform writes."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from lifecycle.errors import UserInputError
from lifecycle.report.residency import render_markdown, render_table, residency_lookup, residency_report
from lifecycle.route import metrics, telemetry
from lifecycle.route.audit import Attempt, AuditLog, AuditRecord, read_log
from lifecycle.route.export import export
from lifecycle.route.telemetry import (
    CONTENT_ATTRIBUTES,
    Served,
    TraceContext,
    attempt_attributes,
    child_context,
    format_traceparent,
    parse_traceparent,
    prompt_hmac,
    request_facts,
    response_facts,
)

KEY = b"k" * 32
MARKER = "zebra-canary qwx do not log"  # not hex: random ids cannot contain it
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": f"You are terse. {MARKER}"},
    {"role": "user", "content": [{"type": "text", "text": f"Say {MARKER}"}]},
]
CHAT: dict[str, Any] = {
    "model": "support",
    "messages": MESSAGES,
    "stream": False,
    "max_tokens": 64,
    "temperature": 0.2,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": {"description": MARKER}},
    },
    "tools": [{"type": "function", "function": {"name": "lookup", "description": MARKER}}],
    "user": MARKER,
}
ANSWER: dict[str, Any] = {
    "id": "chatcmpl-42",
    "object": "chat.completion",
    "model": "support-bot",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {
                "role": "assistant",
                "content": f"Sure: {MARKER}",
                "tool_calls": [{"function": {"name": "lookup", "arguments": json.dumps({"q": MARKER})}}],
            },
        }
    ],
    "usage": {"prompt_tokens": 31, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 16}},
}
CHUNKS: list[dict[str, Any]] = [
    {"id": "cmpl-7", "model": "support-bot", "choices": [{"index": 0, "delta": {"content": MARKER}}]},
    {
        "id": "cmpl-7",
        "model": "support-bot",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
    },
    {
        "id": "cmpl-7",
        "model": "support-bot",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3},
    },
]


def served(hmac_value: str) -> Served:
    return Served(
        route="support",
        tenant="acme",
        cost_class="pool",
        residency="self_hosted",
        backend="support-bot",
        backend_residency="self_hosted",
        region=None,
        model_name="support-bot",
        model_version=3,
        quantization_scheme="FP8_DYNAMIC",
        quantization_config_sha256="cd" * 32,
        prompt_hmac=hmac_value,
        hmac_key_id=telemetry.hmac_key_id(KEY),
    )


def test_prompt_hmac_is_keyed_canonical_and_keeps_chat_apart_from_completion() -> None:
    digest = prompt_hmac(KEY, MESSAGES)
    assert len(digest) == 64 and int(digest, 16) >= 0
    reordered = [{"content": m["content"], "role": m["role"]} for m in MESSAGES]
    assert prompt_hmac(KEY, reordered) == digest
    assert prompt_hmac(b"j" * 32, MESSAGES) != digest
    assert prompt_hmac(KEY, "caf\u00e9") == prompt_hmac(KEY, "cafe\u0301")  # NFC: the same text
    assert prompt_hmac(KEY, "hello") != prompt_hmac(KEY, "hello ")
    as_chat = [{"role": "user", "content": "hello"}]
    assert prompt_hmac(KEY, as_chat) != prompt_hmac(KEY, '[{"content":"hello","role":"user"}]')
    assert prompt_hmac(KEY, [1, 2, 3]) != prompt_hmac(KEY, "[1,2,3]")
    with pytest.raises(UserInputError, match="16 bytes"):
        prompt_hmac(b"short", "hello")


def test_facts_are_read_from_bodies_and_streams() -> None:
    request = request_facts(CHAT)
    assert request == telemetry.RequestFacts("chat", "support", False, "json", 64, 0.2, None)
    assert request_facts({"model": "m", "prompt": "x", "stream": True}).operation == "text_completion"
    answer = response_facts(ANSWER)
    assert answer == telemetry.ResponseFacts("support-bot", "chatcmpl-42", ("stop",), 31, 9, 16)
    stream = response_facts(CHUNKS)
    assert stream == telemetry.ResponseFacts("support-bot", "cmpl-7", ("length",), 5, 3, None)


def test_attempt_attributes_follow_the_genai_conventions() -> None:
    request, answer = request_facts(CHAT), response_facts(ANSWER)
    attrs = attempt_attributes(
        request,
        served(prompt_hmac(KEY, MESSAGES)),
        provider="vllm",
        server_address="10.0.0.5",
        server_port=8001,
        attempt=2,
        response=answer,
        time_to_first_chunk_s=0.12,
        cost_usd=Decimal("0.0021"),
    )
    assert telemetry.span_name(request) == "chat support"
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "vllm"
    assert attrs["gen_ai.request.model"] == "support" and attrs["gen_ai.response.model"] == "support-bot"
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (31, 9)
    assert (attrs["server.address"], attrs["server.port"]) == ("10.0.0.5", 8001)
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["lifecycle.model.version"] == 3 and attrs["lifecycle.quantization.scheme"] == "FP8_DYNAMIC"
    assert attrs["lifecycle.prompt.hmac"] == prompt_hmac(KEY, MESSAGES) and attrs["lifecycle.attempt"] == 2
    assert "error.type" not in attrs and not CONTENT_ATTRIBUTES & attrs.keys()
    assert all(v is not None for v in attrs.values())
    assert all(key.startswith(("gen_ai.", "server.", "error.", "lifecycle.")) for key in attrs)

    failed = attempt_attributes(
        request,
        served("ab" * 32),
        provider="openai",
        server_address="api.example.com",
        server_port=443,
        attempt=1,
        error=telemetry.error_type(status=503),
    )
    assert failed["error.type"] == "503" and "gen_ai.usage.input_tokens" not in failed
    assert telemetry.error_type(exc=TimeoutError()) == "timeout"
    assert telemetry.error_type(exc=ConnectionRefusedError()) == "ConnectionRefusedError"
    assert telemetry.error_type(status=200) is None
    with pytest.raises(ValueError, match="never a message"):
        attempt_attributes(
            request,
            served("ab" * 32),
            provider="x",
            server_address="h",
            server_port=1,
            attempt=1,
            error="bad: x y",
        )


def test_the_genai_names_are_the_conventions_own() -> None:
    semconv = pytest.importorskip("opentelemetry.semconv._incubating.attributes.gen_ai_attributes")
    known = {value for name, value in vars(semconv).items() if name.startswith("GEN_AI_")}
    attrs = attempt_attributes(
        request_facts(CHAT),
        served("ab" * 32),
        provider="vllm",
        server_address="h",
        server_port=1,
        attempt=1,
        response=response_facts(ANSWER),
        time_to_first_chunk_s=0.1,
    )
    genai = {key for key in attrs if key.startswith("gen_ai.")}
    assert genai <= known, genai - known
    assert known >= CONTENT_ATTRIBUTES  # the names kept out are real ones
    assert "gen_ai.usage.prompt_tokens" not in attrs  # the older names vLLM still uses


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has nothing after
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(header: str | None) -> None:
    assert parse_traceparent(header) is None


def test_traceparent_round_trips_and_children_stay_in_the_trace() -> None:
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    parent = parse_traceparent(header)
    assert parent == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert format_traceparent(parent) == header
    future = parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more")
    assert future is not None and not future.sampled
    child = child_context(parent)
    assert child.trace_id == parent.trace_id and child.span_id != parent.span_id and child.sampled
    assert parse_traceparent(format_traceparent(child)) == child
    fresh = child_context(None, sampled=False)
    assert len(fresh.trace_id) == 32 and fresh.trace_id != parent.trace_id and not fresh.sampled


def guard() -> metrics.LabelGuard:
    return metrics.label_guard(
        routes=["support"],
        tenants=["acme"],
        versions=[metrics.version_label("support-bot", 3)],
        backends=["support-bot"],
        providers=["vllm", "openai"],
    )


def test_labels_outside_the_known_sets_become_other() -> None:
    labels = guard().labels(
        metrics.REQUESTS,
        route="support",
        tenant="a-random-tenant",
        version="support-bot/3",
        cost_class="pool",
        outcome="ok",
    )
    assert labels == {
        "route": "support",
        "tenant": "other",
        "version": "support-bot/3",
        "cost_class": "pool",
        "outcome": "ok",
    }
    with pytest.raises(ValueError, match="takes labels"):
        guard().labels(metrics.REQUESTS, route="support")
    assert metrics.version_label(None, None) == "none"
    for metric in metrics.METRICS:
        assert guard().series_bound(metric) <= 5_000, metric.name


def test_every_metric_registers_with_prometheus() -> None:
    prometheus = pytest.importorskip("prometheus_client")
    registry = prometheus.CollectorRegistry()
    kinds = {"counter": prometheus.Counter, "gauge": prometheus.Gauge, "histogram": prometheus.Histogram}
    for metric in metrics.METRICS:
        extra = {"buckets": metric.buckets} if metric.buckets else {}
        kinds[metric.kind](metric.name, metric.help, metric.labels, registry=registry, **extra)
    exposed = prometheus.generate_latest(registry).decode()
    assert all(metric.name in exposed for metric in metrics.METRICS if metric.kind == "counter")


def test_a_marker_in_prompts_and_completions_reaches_nothing_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    written: list[str] = []
    hmac_value = prompt_hmac(KEY, CHAT["messages"])
    request = request_facts(CHAT)
    for response in (response_facts(ANSWER), response_facts(CHUNKS)):
        attrs = attempt_attributes(
            request,
            served(hmac_value),
            provider="vllm",
            server_address="10.0.0.5",
            server_port=8001,
            attempt=1,
            response=response,
            cost_usd=Decimal("0.001"),
        )
        written += [json.dumps(attrs), repr(response), repr(request), telemetry.span_name(request)]
    completion = request_facts({"model": "support", "prompt": [MARKER, MARKER]})
    written.append(repr(completion))
    written.append(prompt_hmac(KEY, {"prompt": MARKER}))

    # the span as an OpenTelemetry exporter would send it
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    exporting = pytest.importorskip("opentelemetry.sdk.trace.export")
    memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    provider = sdk_trace.TracerProvider()
    spans = memory.InMemorySpanExporter()
    provider.add_span_processor(exporting.SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("lifecycle.route")
    with tracer.start_as_current_span(telemetry.span_name(request), attributes=attrs):
        pass
    [span] = spans.get_finished_spans()
    assert span.attributes is not None and span.attributes["lifecycle.prompt.hmac"] == hmac_value
    written.append(span.to_json())

    # the metrics, labelled from what the request said
    prometheus = pytest.importorskip("prometheus_client")
    registry = prometheus.CollectorRegistry()
    counter = prometheus.Counter(
        metrics.REQUESTS.name, metrics.REQUESTS.help, metrics.REQUESTS.labels, registry=registry
    )
    labels = guard().labels(
        metrics.REQUESTS,
        route=request.model,
        tenant="acme",
        version="support-bot/3",
        cost_class="pool",
        outcome="ok",
    )
    counter.labels(**labels).inc()
    written.append(prometheus.generate_latest(registry).decode())

    # the audit record, its export and the residency report over it
    path = tmp_path / "audit.jsonl"
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    with AuditLog(path) as log:
        log.append(
            AuditRecord(
                request_id="req-1",
                tenant="acme",
                route=request.model,
                residency="self_hosted",
                cost_class="pool",
                attempts=(Attempt("support-bot", "vllm", None, "self_hosted", "ok"),),
                model_name="support-bot",
                model_version=3,
                quantization_scheme="FP8_DYNAMIC",
                quantization_config_sha256="cd" * 32,
                input_tokens=response_facts(ANSWER).input_tokens or 0,
                output_tokens=response_facts(ANSWER).output_tokens or 0,
                cost_usd=Decimal("0.001"),
                prompt_hmac=hmac_value,
                hmac_key_id=telemetry.hmac_key_id(KEY),
                received_at=now,
                finished_at=now + timedelta(seconds=1),
                outcome="ok",
            )
        )
    written.append(path.read_text())
    written.append(export(path, None, "acme", b"s" * 32).read_text())
    snapshot = read_log(path)
    report = residency_report(
        snapshot.records,
        "acme",
        None,
        residency_lookup({"self_hosted": {"self_hosted"}}),
        chain=snapshot.chain,
    )
    written += [render_table(report), render_markdown(report)]
    written.append(caplog.text)

    assert len(written) > 10 and all(written[:-1])
    for text in written:
        for needle in (MARKER, "zebra-canary", "qwx do not"):
            assert needle not in text, text[:300]
