"""One request through the router, from the moment it arrives to its audit record: the backends of its plan tried
in order until one answers (`fly`), the answer handed to the client (whole, or streamed as it comes), and at the
end, whatever happened, exactly once: the metrics, and (handed to the router's writer thread, so that the answer
does not wait for the disk) the budget settled with the real usage and one audit record.

Spans: one SERVER span for the request (child of the client's `traceparent`), and under it one CLIENT span per
upstream attempt with the GenAI attributes (`telemetry.attempt_attributes`); the attempt span's own context goes
to the backend as `traceparent`, so that vLLM's request span nests under it. Nothing here puts prompt or
completion text anywhere: spans, metrics and the audit record get counts, names and the prompt's keyed HMAC.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from lifecycle.route.audit import Attempt, AuditRecord
from lifecycle.route.budget import Reservation, Usage, cost, estimate
from lifecycle.route.decide import Refusal, RoutePlan, RouteRequest, pick_replica
from lifecycle.route.metrics import (
    COST,
    FALLBACKS,
    REQUEST_DURATION,
    REQUESTS,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
    UPSTREAM_ATTEMPTS,
    version_label,
)
from lifecycle.route.policy import Tenant
from lifecycle.route.state import Host, RouterState
from lifecycle.route.targets import Candidate, Replica
from lifecycle.route.telemetry import (
    RequestFacts,
    ResponseFacts,
    Served,
    TraceContext,
    attempt_attributes,
    child_context,
    error_type,
    format_traceparent,
    parse_traceparent,
    request_facts,
    span_name,
)
from lifecycle.route.upstream import (
    TRANSPORT_ERRORS,
    Deadlines,
    Stream,
    StreamFacts,
    UpstreamFailed,
    attempt,
    failure_name,
    sse_error_event,
    whole_facts,
)

log = logging.getLogger(__name__)

Outcome = Literal["ok", "error", "rejected"]
NO_HMAC = "0" * 64  # a request refused before its prompt was read has no prompt to hash


@dataclass(frozen=True)
class Destination:
    url: str  # the endpoint the request is posted to
    key: str  # what requests in flight are counted against: the replica's URL, the upstream's base URL
    replica: bool


def json_response(content: Any, status: int = 200) -> web.Response:
    """A JSON answer, compact and UTF-8, typed `application/json`."""
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return web.Response(body=text.encode(), status=status, content_type="application/json")


def refusal_response(refusal: Refusal) -> web.Response:
    return json_response(refusal.error_body(), refusal.status)


def _hex(context: SpanContext) -> TraceContext:
    return TraceContext(
        format(context.trace_id, "032x"), format(context.span_id, "016x"), context.trace_flags.sampled
    )


@dataclass
class Flight:
    host: Host
    state: RouterState
    path: str
    request_id: str
    received_at: datetime
    started: float
    incoming: TraceContext | None
    span: trace.Span
    tenant: Tenant | None = None
    body: dict[str, Any] = field(default_factory=dict)
    request: RouteRequest | None = None
    facts: RequestFacts | None = None
    digest: str = NO_HMAC
    plan: RoutePlan | None = None
    reservation: Reservation | None = None
    attempts: list[Attempt] = field(default_factory=list)
    candidate: Candidate | None = None  # the last one tried
    failure: tuple[str, str] | None = None  # (backend, error.type) of the last attempt that failed
    closed: bool = False
    _bodies: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def begin(cls, host: Host, state: RouterState, path: str, traceparent: str | None) -> Flight:
        incoming = parse_traceparent(traceparent)
        parent = None
        if incoming is not None:
            remote = SpanContext(
                trace_id=int(incoming.trace_id, 16),
                span_id=int(incoming.span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED if incoming.sampled else TraceFlags.DEFAULT),
            )
            parent = trace.set_span_in_context(NonRecordingSpan(remote))
        span = host.tracer.start_span(
            f"POST {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": path},
        )
        host.open_flight()
        return cls(
            host=host,
            state=state,
            path=path,
            request_id=uuid.uuid4().hex,
            received_at=datetime.now(timezone.utc),
            started=time.monotonic(),
            incoming=incoming,
            span=span,
        )

    # ------------------------------------------------------------------------------------------ steps

    def accept(self, body: dict[str, Any], request: RouteRequest, digest: str) -> None:
        self.body, self.request, self.digest = body, request, digest
        self.facts = request_facts(body)

    @property
    def route(self) -> str:
        if self.plan is not None:
            return self.plan.route
        return self.request.model if self.request is not None else ""

    async def reserve(self) -> Refusal | None:
        """Hold the most this request can cost against its tenant's budget; a Refusal (429) when it is spent."""
        tenant, plan, request, budgets = self.tenant, self.plan, self.request, self.host.budgets
        if tenant is None or tenant.budget is None or budgets is None or plan is None or request is None:
            return None
        output = request.max_tokens or self.state.policy.limits.reserve_output_tokens
        amount = estimate(plan.candidates, plan.input_tokens, output)
        held = await asyncio.to_thread(budgets.reserve, tenant.name, tenant.budget, amount, self.received_at)
        if isinstance(held, Refusal):
            return held
        self.reservation = held
        return None

    def refuse(self, refusal: Refusal) -> web.Response:
        """The router's own answer; the request is counted, and audited once its tenant and prompt are known."""
        self._close(
            None, None, None, "rejected", refusal.code if refusal.status != 429 else "429", refusal.status
        )
        return refusal_response(refusal)

    async def fly(self, request: web.BaseRequest) -> web.StreamResponse:
        """Try the plan's backends in order (each replica of a deployment in turn) until one answers; a stream
        is passed on to `request`'s client as it comes."""
        assert self.plan is not None
        tried: set[str] = set()
        for candidate in self.plan.candidates:
            for _ in range(max(1, len(candidate.replicas))):
                destination = self._destination(candidate, tried)
                if destination is None:
                    break
                tried.add(destination.key)
                answer = await self._attempt(request, candidate, destination)
                if answer is not None:
                    return answer
        kinds = ", ".join(f"{a.backend} ({a.outcome})" for a in self.attempts) or "none was reachable"
        last = self.failure[1] if self.failure else "unavailable"
        status = 504 if last == "timeout" else 502
        refusal = Refusal(status, "upstream_failed", f"every backend failed before answering: {kinds}")
        self._close(self.candidate, None, None, "error", last, status)
        return refusal_response(refusal)

    # ------------------------------------------------------------------------------------------ attempts

    def _destination(self, candidate: Candidate, tried: set[str]) -> Destination | None:
        path = self.path
        if candidate.kind == "deployment":
            assert self.plan is not None
            cap = self.state.policy.replicas.affinity_cap
            prefix = self.plan.prefix_key

            def pick(replicas: Sequence[Replica], load: Mapping[str, int]) -> Replica | None:
                return pick_replica(replicas, load, candidate.adapter, prefix, cap)

            replica = self.host.take(candidate.replicas, candidate.model, pick, tried)
            if replica is None:
                return None
            return Destination(replica.url.rstrip("/") + path, replica.url, True)
        upstream = self.state.policy.upstream(candidate.backend)
        if upstream is None or upstream.base_url in tried:
            return None
        self.host.took(upstream.base_url, candidate.model)
        return Destination(upstream.base_url.rstrip("/") + path.removeprefix("/v1"), upstream.base_url, False)

    def _body_for(self, model: str) -> bytes:
        if model not in self._bodies:
            self._bodies[model] = json.dumps({**self.body, "model": model}).encode()
        return self._bodies[model]

    async def _attempt(
        self, request: web.BaseRequest, candidate: Candidate, destination: Destination
    ) -> web.StreamResponse | None:
        assert self.request is not None and self.facts is not None and self.plan is not None
        host, number = self.host, len(self.attempts) + 1
        if self.failure is not None:
            backend, kind = self.failure
            host.metrics.inc(FALLBACKS, route=self.route, backend=backend, error_type=kind)
        self.candidate = candidate
        facts = replace(self.facts, model=candidate.model)
        span = host.tracer.start_span(
            span_name(facts), context=trace.set_span_in_context(self.span), kind=SpanKind.CLIENT
        )
        own = span.get_span_context()
        context = _hex(own) if own.is_valid else child_context(self.incoming)
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
            "traceparent": format_traceparent(context),
        }
        key = self.state.upstream_keys.get(candidate.backend) if candidate.kind == "upstream" else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        timeouts = self.state.policy.timeouts
        deadlines = Deadlines(timeouts.connect_s, timeouts.first_byte_s, timeouts.total_s)
        assert host.client is not None
        try:
            answer = await attempt(
                host.client,
                destination.url,
                self._body_for(candidate.model),
                headers,
                deadlines,
                stream=self.request.stream,
            )
        except UpstreamFailed as failed:
            host.release(destination.key, candidate.model)
            self.attempts.append(_attempt_record(candidate, failed.kind))
            self._end_span(span, candidate, destination, number, facts, None, failed.kind, None)
            outcome = "timeout" if failed.kind == "timeout" else "error"
            host.metrics.inc(
                UPSTREAM_ATTEMPTS, backend=candidate.backend, provider=candidate.provider, outcome=outcome
            )
            self.failure = (candidate.backend, failed.kind)
            if failed.kind == "connect":
                host.unreachable(destination.key if destination.replica else candidate.backend)
            return None
        labels = self._labels(candidate)
        host.metrics.observe(TIME_TO_FIRST_TOKEN, time.monotonic() - self.started, **labels)
        prefix = self.plan.prefix_key if destination.replica else None
        if isinstance(answer, Stream):
            return await self._relay(request, candidate, destination, span, number, facts, answer)
        seen = whole_facts(answer.body)
        error = error_type(status=answer.status)
        host.release(destination.key, candidate.model, prefix)
        self.attempts.append(_attempt_record(candidate, error or "ok"))
        host.metrics.inc(
            UPSTREAM_ATTEMPTS,
            backend=candidate.backend,
            provider=candidate.provider,
            outcome="error" if error else "ok",
        )
        usage = self._usage(candidate, seen, None)
        self._end_span(span, candidate, destination, number, facts, seen, error, answer.first_byte_s, usage)
        self._close(candidate, seen, None, "error" if error else "ok", error, answer.status)
        return web.Response(body=answer.body, status=answer.status, headers=answer.headers)

    async def _relay(
        self,
        request: web.BaseRequest,
        candidate: Candidate,
        destination: Destination,
        span: trace.Span,
        number: int,
        facts: RequestFacts,
        answer: Stream,
    ) -> web.StreamResponse:
        """Pass a stream on as it comes; a backend that breaks off ends it with an error event, never a replay."""
        out = web.StreamResponse(status=answer.status, headers=answer.headers)
        seen = StreamFacts()
        error: str | None = None
        complete = False
        try:
            seen.feed(answer.first)
            if await _send(out, answer.first, request):
                while (chunk := await answer.next_chunk()) is not None:
                    seen.feed(chunk)
                    if not await _send(out, chunk):
                        break
                else:
                    complete = True
        except TRANSPORT_ERRORS as exc:
            error = failure_name(exc)
            await _send(out, sse_error_event(error))
        finally:
            if not complete and error is None:
                error = "client_closed"  # the client went away (or the router stopped before the end)
            host = self.host
            answer.close()
            prefix = self.plan.prefix_key if destination.replica and self.plan else None
            host.release(destination.key, candidate.model, prefix)
            self.attempts.append(_attempt_record(candidate, error or "ok"))
            host.metrics.inc(
                UPSTREAM_ATTEMPTS,
                backend=candidate.backend,
                provider=candidate.provider,
                outcome="error" if error else "ok",
            )
            response = seen.response()
            usage = self._usage(candidate, response, seen.pieces)
            self._end_span(
                span, candidate, destination, number, facts, response, error, answer.first_byte_s, usage
            )
            self._close(candidate, response, seen.pieces, "error" if error else "ok", error, answer.status)
        return out  # aiohttp ends it (the last chunk), or finds the client gone

    # ------------------------------------------------------------------------------------------ the end

    def _usage(
        self, candidate: Candidate, seen: ResponseFacts | None, pieces: int | None
    ) -> tuple[int, int, Decimal]:
        """Input and output tokens (the backend's count, else the estimate and the pieces counted) and cost."""
        estimated = self.plan.input_tokens if self.plan else 0
        tokens_in = seen.input_tokens if seen and seen.input_tokens is not None else estimated
        tokens_out = seen.output_tokens if seen and seen.output_tokens is not None else (pieces or 0)
        return tokens_in, tokens_out, Decimal(str(cost(candidate.price, tokens_in, tokens_out)))

    def _served(self, candidate: Candidate) -> Served:
        assert self.tenant is not None and self.plan is not None
        return Served(
            route=self.plan.route,
            tenant=self.tenant.name,
            cost_class=candidate.cost_class,
            residency=self.plan.residency,
            backend=candidate.backend,
            backend_residency=candidate.residency,
            region=candidate.region,
            model_name=candidate.registered_model,
            model_version=candidate.version,
            quantization_scheme=candidate.quantization,
            quantization_config_sha256=candidate.quantization_sha256,
            prompt_hmac=self.digest,
            hmac_key_id=self.host.hmac_key_id,
        )

    def _end_span(
        self,
        span: trace.Span,
        candidate: Candidate,
        destination: Destination,
        number: int,
        facts: RequestFacts,
        seen: ResponseFacts | None,
        error: str | None,
        first_chunk_s: float | None,
        usage: tuple[int, int, Decimal] | None = None,
    ) -> None:
        where = urlsplit(destination.url)
        span.set_attributes(
            attempt_attributes(
                facts,
                self._served(candidate),
                provider=candidate.provider,
                server_address=where.hostname or "",
                server_port=where.port,
                attempt=number,
                response=seen,
                error=error,
                time_to_first_chunk_s=first_chunk_s,
                cost_usd=usage[2] if usage else None,
            )
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _labels(self, candidate: Candidate | None) -> dict[str, str]:
        return {
            "route": self.route,
            "tenant": self.tenant.name if self.tenant else "",
            "version": version_label(candidate.registered_model, candidate.version) if candidate else "none",
        }

    def _close(
        self,
        candidate: Candidate | None,
        seen: ResponseFacts | None,
        pieces: int | None,
        outcome: Outcome,
        error: str | None,
        status: int,
    ) -> None:
        """Exactly once per request: metrics, the request span, then (off the loop) settle and audit."""
        if self.closed:
            return
        self.closed = True
        metrics = self.host.metrics
        labels = self._labels(candidate)
        cost_class = candidate.cost_class if candidate else "none"
        metrics.inc(REQUESTS, cost_class=cost_class, outcome=outcome, **labels)
        tokens_in = tokens_out = 0
        dollars = Decimal(0)
        if candidate is not None and outcome != "rejected":
            tokens_in, tokens_out, dollars = self._usage(candidate, seen, pieces)
            metrics.observe(REQUEST_DURATION, time.monotonic() - self.started, **labels)
            metrics.inc(TOKENS, tokens_in, direction="input", **labels)
            metrics.inc(TOKENS, tokens_out, direction="output", **labels)
            metrics.inc(COST, float(dollars), cost_class=cost_class, **labels)
        attributes: dict[str, str | int] = {
            "http.response.status_code": status,
            "lifecycle.route": self.route,
            "lifecycle.request_id": self.request_id,
        }
        if self.tenant is not None:
            attributes["lifecycle.tenant"] = self.tenant.name
        self.span.set_attributes(attributes)
        if outcome != "ok":
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
        own = self.span.get_span_context()
        trace_id = format(own.trace_id, "032x") if own.is_valid else None
        record = None
        if self.tenant is not None and self.request is not None:
            record = AuditRecord(
                request_id=self.request_id,
                tenant=self.tenant.name,
                route=self.route,
                residency=self.plan.residency if self.plan else self.tenant.residency,
                cost_class=cost_class,
                attempts=tuple(self.attempts),
                model_name=candidate.registered_model if candidate else None,
                model_version=candidate.version if candidate else None,
                quantization_scheme=candidate.quantization if candidate else None,
                quantization_config_sha256=candidate.quantization_sha256 if candidate else None,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost_usd=dollars,
                prompt_hmac=self.digest,
                hmac_key_id=self.host.hmac_key_id,
                received_at=self.received_at,
                finished_at=datetime.now(timezone.utc),
                outcome=outcome,
                error_type=_token(error) if error else None,
                trace_id=trace_id,
            )
        usage = Usage(tokens_in + tokens_out, float(dollars))
        self.host.write_later(lambda: self._write(record, usage))

    def _write(self, record: AuditRecord | None, usage: Usage) -> None:
        budgets, tenant = self.host.budgets, self.tenant
        if self.reservation is not None and budgets is not None and tenant is not None and tenant.budget:
            try:
                budgets.settle(self.reservation, usage, tenant.budget, datetime.now(timezone.utc))
            except Exception as exc:  # the answer is out; say what failed, never with request data
                log.error("request %s: settling the budget failed (%s)", self.request_id, type(exc).__name__)
        if record is not None:
            try:
                self.host.audit.append(record)
            except Exception as exc:
                log.error(
                    "request %s: the audit record was not written (%s)", self.request_id, type(exc).__name__
                )


# what writing to a client that went away raises (aiohttp's ClientConnectionResetError is a ConnectionResetError)
CLIENT_GONE: tuple[type[BaseException], ...] = (ConnectionError,)


async def _send(out: web.StreamResponse, chunk: bytes, request: web.BaseRequest | None = None) -> bool:
    """Write `chunk` to the client (first sending the head, when `request` is given); False when it has gone."""
    try:
        if request is not None:
            await out.prepare(request)
        await out.write(chunk)
    except CLIENT_GONE:
        return False
    return True


def _attempt_record(candidate: Candidate, outcome: str) -> Attempt:
    return Attempt(
        candidate.backend, candidate.provider, candidate.region, candidate.residency, _token(outcome)
    )


def _token(value: str) -> str:
    """A short name fit for `error.type` and audit outcomes."""
    cleaned = "".join(ch if ch.isalnum() or ch in "_.:-" else "_" for ch in value)[:64]
    return cleaned or "error"
