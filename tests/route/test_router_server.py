"""The router over real HTTP: stand-in upstreams and pool replicas speaking OpenAI's protocol, the router between
them and an httpx client, its audit log, spans (OpenTelemetry SDK, in memory) and /metrics read back."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from route_world import deployment, pool
from upstream_world import StandIn

from lifecycle.route.audit import AuditLog, AuditRecord, read_log
from lifecycle.route.budget import SqliteBudgets
from lifecycle.route.load import load_policy
from lifecycle.route.policy import hash_key
from lifecycle.route.server import Router
from lifecycle.serve.front import Backend

HMAC_KEY = b"router-test-hmac-key-32-bytes!!!"
MARKER = "zebra7quartz"  # planted in prompts (and echoed into completions); must appear nowhere we write
POOL = pool(deployment("support", model="demo-support", version=3))


def policy_text(hosted: StandIn, frontier: StandIn, *, extra_route: str = "") -> str:
    return f"""\
tenants:
  - name: product
    keys: [{hash_key("key-product")}]
    cost_classes: [pool, hosted, frontier]
    residency: any
  - name: regulated
    keys: [{hash_key("key-regulated")}]
    cost_classes: [pool, frontier]
    residency: self_hosted
  - name: tight
    keys: [{hash_key("key-tight")}]
    cost_classes: [pool, hosted, frontier]
    residency: any
    budget: {{period: day, tokens: 100}}
upstreams:
  - name: hosted
    cost_class: hosted
    provider: together_ai
    base_url: {hosted.base_url}
    model: open-70b
    api_key_env: HOSTED_KEY
    region: us-east-1
    price: {{input_per_million: 1, output_per_million: 1}}
  - name: frontier
    cost_class: frontier
    provider: openai
    base_url: {frontier.base_url}
    model: frontier-1
    api_key_env: FRONTIER_KEY
    region: us-east-1
    price: {{input_per_million: 2, output_per_million: 8}}
routes:
  - name: chat
    targets: [support, hosted, frontier]
  - name: outside
    targets: [hosted, frontier]
  - name: private
    targets: [support, frontier]
{extra_route}
timeouts: {{connect_s: 1, first_byte_s: 0.5, total_s: 5}}
health: {{interval_s: 0.2, timeout_s: 0.2, unhealthy_after: 1, healthy_after: 1}}
limits: {{max_body_bytes: 4096, reserve_output_tokens: 16}}
"""


@dataclass
class World:
    router: Router
    client: httpx.Client
    hosted: StandIn
    frontier: StandIn
    replicas: list[StandIn]
    spans: InMemorySpanExporter
    audit_path: Path
    policy_path: Path

    def post(
        self, key: str, body: dict[str, Any], path: str = "/v1/chat/completions", **kw: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
        return self.client.post(path, json=body, headers=headers, **kw)

    def records(self) -> list[AuditRecord]:
        assert self.router.wait_settled()
        return [r.record for r in read_log(self.audit_path).records]

    def attempt_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.kind == SpanKind.CLIENT]


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    hosted, frontier = StandIn("hosted", key="sk-hosted"), StandIn("frontier", key="sk-frontier")
    replicas = [StandIn("support-0"), StandIn("support-1")]
    policy_path = tmp_path / "routing.yaml"
    policy_path.write_text(policy_text(hosted, frontier))
    spans = InMemorySpanExporter()
    provider = SdkTracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    audit_path = tmp_path / "audit.jsonl"
    router = Router(
        load_policy(policy_path, POOL),
        audit=AuditLog(audit_path, durability="flush"),
        hmac_key=HMAC_KEY,
        env={"HOSTED_KEY": "sk-hosted", "FRONTIER_KEY": "sk-frontier"},
        budgets=SqliteBudgets(tmp_path / "budgets.sqlite"),
        pool=POOL,
        tracer_provider=provider,
        watch_every_s=getattr(request, "param", {}).get("watch_every_s", 0.1),
    )
    router.set_routes(
        {"support": [Backend(r.root, "support", f"support/{i}") for i, r in enumerate(replicas)]}
    )
    router.start()
    client = httpx.Client(base_url=router.url, timeout=10)
    try:
        yield World(router, client, hosted, frontier, replicas, spans, audit_path, policy_path)
    finally:
        client.close()
        router.stop()
        router.audit.close()
        for s in (hosted, frontier, *replicas):
            s.stop()


def chat(model: str = "chat", text: str = "hello there", **rest: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **rest}


# ------------------------------------------------------------------------------------------ the limits


def test_a_pool_deployment_answers_and_the_request_is_audited(world: World) -> None:
    answer = world.post("key-product", chat())
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "echo hello there"
    sent = [s for r in world.replicas for s in r.completions()]
    assert len(sent) == 1 and sent[0].body["model"] == "support"  # the route name became the served name
    assert "authorization" not in sent[0].headers  # the client's key never travels on
    [record] = world.records()
    assert (record.tenant, record.route, record.backend, record.outcome) == (
        "product",
        "chat",
        "support",
        "ok",
    )
    assert (record.model_name, record.model_version, record.quantization_scheme) == (
        "demo-support",
        3,
        "FP8_DYNAMIC",
    )
    assert (record.input_tokens, record.output_tokens) == (2, 3)
    assert len(record.prompt_hmac) == 64


@pytest.mark.parametrize(
    ("key", "body", "status", "code"),
    [
        (None, chat(), 401, "unauthorized"),
        ("not-a-key", chat(), 401, "unauthorized"),
        ("key-product", b"{not json", 400, "invalid_json"),
        ("key-product", {"model": "chat"}, 400, "invalid_request"),
        ("key-product", chat(text="x" * 5000), 413, "body_too_large"),
        ("key-product", chat("no-such-route"), 404, "model_not_found"),
        ("key-tight", chat(max_tokens=500), 429, "budget_exceeded"),
    ],
    ids=["no-key", "unknown-key", "bad-json", "no-messages", "too-large", "unknown-model", "over-budget"],
)
def test_refusals_are_openai_error_objects(
    world: World, key: str | None, body: Any, status: int, code: str
) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, bytes):
        answer = world.client.post("/v1/chat/completions", content=body, headers=headers)
    else:
        answer = world.client.post("/v1/chat/completions", json=body, headers=headers)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert not any(s.requests for s in (world.hosted, world.frontier, *world.replicas) if s.completions())


def test_a_budget_is_reserved_before_and_settled_with_the_real_usage_after(world: World) -> None:
    for r in world.replicas:
        r.bill_output = 45  # each answer reports 45 completion tokens
    body = chat(text="hi", max_tokens=10)  # reserves 1 + 10 tokens of the tenant's 100
    assert world.post("key-tight", body).status_code == 200
    assert world.router.wait_settled()
    assert world.post("key-tight", body).status_code == 200  # 46 used, 11 more fit
    assert world.router.wait_settled()
    third = world.post("key-tight", body)  # 92 used: 11 more do not
    assert third.status_code == 429 and third.json()["error"]["type"] == "RateLimitError"
    assert [r.outcome for r in world.records()] == ["ok", "ok", "rejected"]


def test_models_lists_the_routes_the_tenant_may_use(world: World) -> None:
    listed = world.client.get("/v1/models", headers={"Authorization": "Bearer key-regulated"}).json()
    assert [m["id"] for m in listed["data"]] == ["chat", "private"]  # `outside` has nothing self-hosted
    everyone = world.client.get("/v1/models", headers={"Authorization": "Bearer key-product"}).json()
    assert [m["id"] for m in everyone["data"]] == ["chat", "outside", "private"]
    assert world.client.get("/v1/models").status_code == 401
    assert world.client.get("/health").json()["status"] == "ok"


# ------------------------------------------------------------------------------------------ fallbacks


def test_a_500_before_the_first_byte_falls_back_and_the_tried_backends_are_recorded(world: World) -> None:
    world.hosted.behaviour = "status:500"
    answer = world.post("key-product", chat("outside"))
    assert answer.status_code == 200 and answer.json()["model"] == "frontier-1"
    [record] = world.records()
    assert [(a.backend, a.outcome) for a in record.attempts] == [("hosted", "500"), ("frontier", "ok")]
    assert record.last is not None
    assert (record.backend, record.last.provider, record.last.region, record.cost_class) == (
        "frontier",
        "openai",
        "us-east-1",
        "frontier",
    )
    assert world.hosted.completions()[0].headers["authorization"] == "Bearer sk-hosted"
    assert world.frontier.completions()[0].headers["authorization"] == "Bearer sk-frontier"
    assert record.cost_usd > 0


def test_a_timeout_before_the_first_byte_falls_back(world: World) -> None:
    world.hosted.behaviour = "slow:2"
    started = time.monotonic()
    answer = world.post("key-product", chat("outside", stream=True))
    assert answer.status_code == 200 and "data: [DONE]" in answer.text
    assert time.monotonic() - started < 1.8  # first_byte_s is 0.5
    [record] = world.records()
    assert [(a.backend, a.outcome) for a in record.attempts] == [("hosted", "timeout"), ("frontier", "ok")]


def test_a_dead_replica_is_skipped_for_another_replica_of_the_deployment(world: World) -> None:
    world.replicas[0].stop()
    for _ in range(3):
        assert world.post("key-product", chat()).status_code == 200
    assert len(world.replicas[1].completions()) == 3
    assert not world.hosted.completions() and not world.frontier.completions()


def test_a_replica_a_request_cannot_reach_is_taken_out_before_the_next_check(world: World) -> None:
    world.policy_path.write_text(world.policy_path.read_text().replace("interval_s: 0.2", "interval_s: 600"))
    assert world.router.reload()
    time.sleep(0.5)  # the check loop's last short sleep ends; the next check is 10 minutes away
    assert len(world.router.health().replicas["support"]) == 2
    world.replicas[0].stop()
    for _ in range(4):
        assert world.post("key-product", chat()).status_code == 200
    assert [r.url for r in world.router.health().replicas["support"]] == [world.replicas[1].root]
    attempts = [a for r in world.records() for a in r.attempts]
    assert [a.outcome for a in attempts].count("connect") == 1  # the one request that found it, then no more
    assert len(world.replicas[1].completions()) == 4


def test_a_stream_that_began_is_never_replayed(world: World) -> None:
    world.hosted.behaviour = "break"
    with world.client.stream(
        "POST",
        "/v1/chat/completions",
        json=chat("outside", text="one two three four", stream=True),
        headers={"Authorization": "Bearer key-product"},
    ) as answer:
        assert answer.status_code == 200
        text = b"".join(answer.iter_raw()).decode()
    assert "echo" in text and "[DONE]" not in text  # truncated...
    assert '"error"' in text  # ...and said so
    assert len(world.hosted.completions()) == 1 and not world.frontier.completions()  # no second call
    [record] = world.records()
    assert [a.backend for a in record.attempts] == ["hosted"] and record.outcome == "error"


def test_a_client_that_goes_away_mid_stream_is_settled_and_audited(world: World) -> None:
    words = " ".join(f"w{i}" for i in range(150))  # about 1.5 s of stream
    backends = [Backend(r.root, "support", f"support/{i}") for i, r in enumerate(world.replicas)]
    with world.client.stream(
        "POST",
        "/v1/chat/completions",
        json=chat(text=words, stream=True),
        headers={"Authorization": "Bearer key-product"},
    ) as answer:
        chunks = answer.iter_raw()  # held: a dropped iterator closes the connection at once
        next(chunks)
        assert sum(world.router.outstanding(b) for b in backends) == 1
    assert world.router.wait_settled(5)
    assert world.router.drain(backends, timeout_s=1)
    [record] = world.records()
    assert (record.outcome, record.error_type) == ("error", "client_closed")


def test_a_stream_is_passed_through_and_settled_with_its_usage(world: World) -> None:
    body = chat(text="a b c", stream=True, stream_options={"include_usage": True})
    seen: list[str] = []
    with world.client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": "Bearer key-product"}
    ) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                seen.append(line)
    assert len(seen) == 5  # echo a b c, then the usage chunk
    [record] = world.records()
    assert (record.input_tokens, record.output_tokens) == (3, 4)
    counted = chat(text="a b c", stream=True)  # no usage chunk: the content pieces are counted
    assert "[DONE]" in world.post("key-product", counted).text
    assert world.records()[-1].output_tokens == 4


def test_text_completions_are_routed_too(world: World) -> None:
    answer = world.post(
        "key-product", {"model": "chat", "prompt": "say hi", "max_tokens": 5}, "/v1/completions"
    )
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == "echo say hi"
    assert world.attempt_spans()[-1].name == "text_completion support"


# ------------------------------------------------------------------------------------------ residency


def test_a_self_hosted_tenant_never_reaches_an_upstream_even_when_the_pool_is_dead(world: World) -> None:
    assert world.post("key-regulated", chat("outside")).status_code == 403  # nothing self-hosted at all
    for r in world.replicas:
        r.stop()  # dead, and the health checks have not noticed yet
    answer = world.post("key-regulated", chat("private"))
    assert answer.status_code == 502, answer.text
    assert "support" in answer.json()["error"]["message"]
    deadline = time.monotonic() + 3
    while world.router.health().replicas.get("support") and time.monotonic() < deadline:
        time.sleep(0.05)
    noticed = world.post("key-regulated", chat("private"))  # now the plan itself has nothing left
    assert noticed.status_code == 503 and "self_hosted" in noticed.json()["error"]["message"]
    assert not world.frontier.requests or not world.frontier.completions()
    assert not world.hosted.completions()
    records = world.records()
    assert {a.backend for r in records for a in r.attempts} <= {"support"}
    assert [r.outcome for r in records] == ["rejected", "error", "rejected"]
    assert (
        world.post("key-product", chat("private")).status_code == 200
    )  # the same route, any-residency tenant


def test_health_checks_take_a_replica_out_and_back_in(world: World) -> None:
    def up() -> int:
        return len(world.router.health().replicas.get("support", ()))

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 3
        while up() != count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert up() == count

    world.replicas[0].healthy = False
    wait_for(1)
    for _ in range(3):
        assert world.post("key-product", chat()).status_code == 200
    assert not world.replicas[0].completions()
    world.replicas[0].healthy = True
    wait_for(2)
    world.frontier.healthy = False  # an upstream's check carries its key and reads /v1/models
    deadline = time.monotonic() + 3
    while "frontier" in world.router.health().upstreams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "frontier" not in world.router.health().upstreams


def test_set_routes_and_drain_serve_the_pool_runner(world: World) -> None:
    only = Backend(world.replicas[1].root, "support", "support/1")
    world.router.set_routes({"support": [only]})
    for _ in range(2):
        assert world.post("key-product", chat()).status_code == 200
    assert not world.replicas[0].completions() and len(world.replicas[1].completions()) == 2
    assert world.router.drain([only], timeout_s=1) and world.router.outstanding(only) == 0
    assert set(world.router.routes) == {"support"}


def test_stop_ends_the_server_and_leaves_no_thread(world: World) -> None:
    assert world.post("key-product", chat()).status_code == 200
    world.router.stop()
    ours = [t.name for t in threading.enumerate() if t.name == "router" or t.name.startswith("asyncio_")]
    assert ours == []
    with pytest.raises(httpx.ConnectError):
        world.post("key-product", chat())


# ------------------------------------------------------------------------------------------ reload


@pytest.mark.parametrize("world", [{"watch_every_s": None}], indirect=True)
def test_a_bad_policy_is_refused_and_the_old_one_keeps_serving_a_good_one_swaps(world: World) -> None:
    good = policy_text(world.hosted, world.frontier, extra_route="  - name: second\n    targets: [frontier]")
    bad = good.replace("targets: [frontier]", "targets: [no-such-backend]")
    world.policy_path.write_text(bad)
    assert world.router.reload() is False
    assert any("no-such-backend" in p and "routing.yaml:" in p for p in world.router.reload_problems)
    assert world.post("key-product", chat()).status_code == 200
    assert world.post("key-product", chat("second")).status_code == 404
    world.policy_path.write_text(good)
    assert world.router.reload() is True
    assert world.post("key-product", chat("second")).status_code == 200
    metrics = world.client.get("/metrics").text
    assert 'lifecycle_router_policy_reloads_total{outcome="rejected"} 1.0' in metrics
    assert 'lifecycle_router_policy_reloads_total{outcome="ok"} 1.0' in metrics


def test_the_watcher_reloads_a_changed_policy_file(world: World) -> None:
    world.policy_path.write_text(
        policy_text(world.hosted, world.frontier, extra_route="  - name: watched\n    targets: [support]")
    )
    deadline = time.monotonic() + 5
    while world.router.state.policy.route("watched") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert world.post("key-product", chat("watched")).status_code == 200
    world.policy_path.write_text("tenants: [")  # broken YAML: refused, the policy before keeps serving
    deadline = time.monotonic() + 5
    while not world.router.reload_problems and time.monotonic() < deadline:
        time.sleep(0.05)
    assert world.router.reload_problems
    assert world.post("key-product", chat("watched")).status_code == 200


# ------------------------------------------------------------------------------------------ telemetry


def test_one_span_per_attempt_with_the_traceparent_passed_on(world: World) -> None:
    world.hosted.behaviour = "status:503"
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
    assert world.post("key-product", chat("outside", temperature=0.5), headers=headers).status_code == 200
    first, second = world.attempt_spans()
    assert (first.name, second.name) == ("chat open-70b", "chat frontier-1")
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["error.type"] == "503" and "error.type" not in second.attributes
    assert second.attributes["gen_ai.operation.name"] == "chat"
    assert second.attributes["gen_ai.provider.name"] == "openai"
    assert second.attributes["gen_ai.request.model"] == "frontier-1"
    assert second.attributes["gen_ai.response.model"] == "frontier-1"
    assert second.attributes["gen_ai.usage.input_tokens"] == 2
    assert second.attributes["lifecycle.attempt"] == 2 and second.attributes["lifecycle.tenant"] == "product"
    assert second.attributes["lifecycle.prompt.hmac"] == world.records()[0].prompt_hmac
    for span, standin in ((first, world.hosted), (second, world.frontier)):
        assert span.context is not None and span.parent is not None
        sent = standin.completions()[-1].headers["traceparent"]
        assert sent == f"00-{trace_id}-{span.context.span_id:016x}-01"  # the backend's span nests under ours
        assert f"{span.context.trace_id:032x}" == trace_id
    [server] = [s for s in world.spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert server.parent is not None and f"{server.parent.span_id:016x}" == parent
    assert first.parent is not None and server.context is not None
    assert first.parent.span_id == server.context.span_id
    assert world.records()[0].trace_id == trace_id


def test_metrics_count_requests_fallbacks_tokens_and_cost(world: World) -> None:
    world.hosted.behaviour = "status:500"
    assert world.post("key-product", chat("outside")).status_code == 200
    assert world.post("nobody", chat()).status_code == 401
    assert world.router.wait_settled()
    text = world.client.get("/metrics").text
    for name in (
        'lifecycle_router_requests_total{cost_class="frontier",outcome="ok",route="outside",tenant="product",version="none"} 1.0',
        'lifecycle_router_requests_total{cost_class="other",outcome="rejected",route="other",tenant="other",version="none"} 1.0',
        'lifecycle_router_fallbacks_total{backend="hosted",error_type="500",route="outside"} 1.0',
        'lifecycle_router_upstream_attempts_total{backend="hosted",outcome="error",provider="together_ai"} 1.0',
        'lifecycle_router_tokens_total{direction="output",route="outside",tenant="product",version="none"} 3.0',
        "lifecycle_router_cost_usd_total",
        "lifecycle_router_time_to_first_token_seconds_bucket",
        "lifecycle_router_request_duration_seconds_count",
    ):
        assert name in text, name


def test_the_prompt_appears_in_no_span_metric_audit_record_or_log(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = f"please summarise {MARKER} for me"
    world.hosted.behaviour = "status:500"
    assert (
        MARKER in world.post("key-product", chat("outside", text=secret)).text
    )  # echoed back: it was served
    assert "[DONE]" in world.post("key-product", chat(text=secret, stream=True)).text
    assert (
        world.post("key-product", {"model": "chat", "prompt": secret}, "/v1/completions").status_code == 200
    )
    assert world.post("key-regulated", chat("outside", text=secret)).status_code == 403
    world.replicas[0].behaviour = world.replicas[1].behaviour = "break"
    world.post("key-product", chat("private", text=secret, stream=True))
    assert world.router.wait_settled()
    assert MARKER in world.hosted.completions()[0].body["messages"][0]["content"]
    spans = world.spans.get_finished_spans()
    assert len([s for s in spans if s.kind == SpanKind.CLIENT]) >= 5
    exported = json.dumps([{"name": s.name, "attributes": dict(s.attributes or {})} for s in spans])
    assert MARKER not in exported
    assert MARKER not in world.client.get("/metrics").text
    assert MARKER.encode() not in world.audit_path.read_bytes()
    assert len(world.records()) == 5
    assert MARKER not in caplog.text
