"""The router's decisions, each a pure function of data, in the order a request meets them:

1. `authenticate`: the bearer key's sha256 against every tenant's hashes (constant time), else 401;
2. `residency_candidates`: the route's targets cut to where the tenant's (and the request's) data may go,
   before anything else, so no later step and no fallback can reach past it; nothing left fails closed;
3. `shape_filter`: prompt-length windows and context, structured outputs and tools only where the engine was
   started for them;
4. `cost_filter`: the cost classes the tenant may use;
5. health: backends with no healthy replica (or a down upstream) are dropped; none left is a 503 that names the
   residency, never a fallback elsewhere;
6. `pick_replica`, per attempt: least outstanding, with capped affinity for the replica holding the adapter or
   the prompt prefix.

`plan` composes 1-5 (given the tenant) into a `RoutePlan`: the ordered fallback list, and every backend dropped
on the way with the step and the reason, for the request's span. A `Refusal` is the answer when a step leaves
nothing; it carries the status, an OpenAI error object and the same record. Nothing here logs or keeps prompt text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from lifecycle.pool.schema import Pool
from lifecycle.route.policy import ALLOWED_RESIDENCIES, RoutingPolicy, Tenant, TenantResidency, hash_key
from lifecycle.route.targets import Candidate, Replica, resolve_route

Step = Literal["resolve", "residency", "shape", "cost", "health"]
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    413: "BadRequestError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
}
_STRICTNESS: tuple[TenantResidency, ...] = ("self_hosted", "rented", "any")
_STRUCTURED_FORMATS = ("json_schema", "json_object")
_VLLM_STRUCTURED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")


@dataclass(frozen=True)
class Dropped:
    """A backend (or a target naming none) left out of a request's fallback list, and why."""

    target: str
    backend: str
    step: Step
    reason: str


@dataclass(frozen=True)
class Refusal:
    """The router's own answer instead of a backend's: `code` is a stable machine-readable reason."""

    status: int
    code: str
    message: str
    dropped: tuple[Dropped, ...] = ()

    def error_body(self) -> dict[str, Any]:
        """The OpenAI error object."""
        kind = ERROR_TYPES.get(self.status, "APIError")
        return {"error": {"message": self.message, "type": kind, "param": None, "code": self.code}}


@dataclass(frozen=True)
class RouteRequest:
    """What the routing steps need from a request body. `prompt` stays in memory to be measured and hashed."""

    model: str
    prompt: str
    max_tokens: int | None = None
    structured: bool = False
    tools: bool = False
    stream: bool = False
    residency: TenantResidency | None = None  # a stricter rule the caller asks for, never a looser one


@dataclass(frozen=True)
class Cut:
    """A filter step's result: what stays, in order, and what was dropped."""

    kept: tuple[Candidate, ...]
    dropped: tuple[Dropped, ...] = ()


@dataclass(frozen=True)
class Health:
    """What the health checks last saw: each deployment's replicas that are up, and the upstreams that are up."""

    replicas: Mapping[str, tuple[Replica, ...]] = field(default_factory=dict)
    upstreams: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RoutePlan:
    """The fallback order for one request: try `candidates` in turn, each until its first byte."""

    route: str
    tenant: str
    residency: TenantResidency
    input_tokens: int
    candidates: tuple[Candidate, ...]
    dropped: tuple[Dropped, ...]
    prefix_key: str | None


# ------------------------------------------------------------------------------------------------ request


def parse_request(body: object, residency: str | None = None) -> RouteRequest | Refusal:
    """A chat or text completion body (already parsed JSON) and the optional residency header, or a 400."""
    if not isinstance(body, dict):
        return _bad("the body is not a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _bad("the request names no `model`")
    rule = next((r for r in _STRICTNESS if r == residency), None)
    if residency is not None and rule is None:
        return _bad(f"unknown residency {residency!r} (allowed: {', '.join(_STRICTNESS)})")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens <= 0):
        return _bad("`max_tokens` must be a positive integer")
    prompt = _prompt_text(body)
    if prompt is None:
        return _bad("the request has neither `messages` nor `prompt` as OpenAI defines them")
    response_format = body.get("response_format")
    structured = (
        isinstance(response_format, dict) and response_format.get("type") in _STRUCTURED_FORMATS
    ) or any(body.get(key) is not None for key in _VLLM_STRUCTURED)
    tools = body.get("tools") or body.get("functions")
    return RouteRequest(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        structured=structured,
        tools=bool(tools),
        stream=body.get("stream") is True,
        residency=rule,
    )


def _prompt_text(body: dict[str, Any]) -> str | None:
    """All the text the model will read, in order (tool definitions count: they are part of the prompt)."""
    parts: list[str] = []
    messages, prompt = body.get("messages"), body.get("prompt")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                return None
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [
                    p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
                ]
    elif isinstance(prompt, str):
        parts.append(prompt)
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        parts += prompt
    else:
        return None
    if body.get("tools"):
        parts.append(json.dumps(body["tools"], sort_keys=True))
    return "\n".join(parts)


def bytes_estimate(text: str) -> int:
    """Prompt tokens where no tokenizer is at hand: UTF-8 bytes / 4, rounded up."""
    return math.ceil(len(text.encode()) / 4)


def prefix_key(prompt: str, prefix_bytes: int) -> str | None:
    """A key for the prompt's first `prefix_bytes` bytes (None for a shorter prompt: too short to be worth
    sending to the same cache). Held in memory only: a plain hash of short text can be reversed by guessing."""
    head = prompt.encode()[:prefix_bytes]
    return hashlib.blake2b(head, digest_size=16).hexdigest() if len(head) == prefix_bytes else None


# ------------------------------------------------------------------------------------------------ steps


def authenticate(policy: RoutingPolicy, authorization: str | None) -> Tenant | Refusal:
    """The tenant whose key hash matches the `Authorization: Bearer KEY` header, else 401. Every stored hash
    is compared, each in constant time, so timing says nothing about which one matched."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return Refusal(401, "unauthorized", "no API key: send `Authorization: Bearer KEY`")
    digest = hash_key(key)
    found: Tenant | None = None
    for tenant in policy.tenants:
        for stored in tenant.keys:
            if hmac.compare_digest(stored, digest) and found is None:
                found = tenant
    if found is None:
        return Refusal(401, "unauthorized", "the API key is not known here")
    return found


def effective_residency(tenant: Tenant, request: RouteRequest) -> TenantResidency:
    """The stricter of the tenant's rule and the one the request asks for."""
    rules = [tenant.residency] + ([request.residency] if request.residency else [])
    return min(rules, key=_STRICTNESS.index)


def residency_candidates(
    tenant: Tenant, request: RouteRequest, candidates: Sequence[Candidate]
) -> Cut | Refusal:
    """Only backends where the data may go: residency first, then the tenant's regions for anything that is not
    self-hosted. Runs before every other step, so every fallback list is built from what it keeps."""
    rule = effective_residency(tenant, request)
    allowed = ALLOWED_RESIDENCIES[rule]
    kept, dropped = [], []
    for c in candidates:
        if c.residency not in allowed:
            dropped.append(
                _drop(c, "residency", f"{c.residency} backend; {tenant.name}'s data is {rule} only")
            )
        elif tenant.regions and c.residency != "self_hosted" and c.region not in tenant.regions:
            where = ", ".join(tenant.regions)
            dropped.append(_drop(c, "residency", f"region {c.region}; {tenant.name}'s data stays in {where}"))
        else:
            kept.append(c)
    if not kept:
        return Refusal(
            403,
            "residency",
            f"route `{request.model}` has no backend where tenant {tenant.name}'s data may go ({rule}); "
            "the request was not sent anywhere",
            tuple(dropped),
        )
    return Cut(tuple(kept), tuple(dropped))


def shape_filter(
    request: RouteRequest, candidates: Sequence[Candidate], estimate_tokens: Callable[[str], int]
) -> Cut | Refusal:
    """Backends that take this prompt: its length inside the target's window and, with max_tokens, inside the
    context; structured outputs and tools only where the engine was started for them."""
    tokens = estimate_tokens(request.prompt)
    kept, dropped = [], []
    for c in candidates:
        reason = _shape_misfit(request, c, tokens)
        if reason:
            dropped.append(_drop(c, "shape", reason))
        else:
            kept.append(c)
    if not kept:
        reasons = "; ".join(sorted({d.reason for d in dropped}))
        return Refusal(
            400, "shape", f"no backend of `{request.model}` takes this request: {reasons}", tuple(dropped)
        )
    return Cut(tuple(kept), tuple(dropped))


def _shape_misfit(request: RouteRequest, c: Candidate, tokens: int) -> str | None:
    if request.structured and not c.structured_outputs:
        return "structured outputs asked for; not started with a structured-outputs backend"
    if request.tools and not c.tools:
        return "tools asked for; not started with a tool-call parser"
    if c.min_input_tokens is not None and tokens < c.min_input_tokens:
        return f"prompt of ~{tokens} tokens is under this target's {c.min_input_tokens}"
    if c.max_input_tokens is not None and tokens > c.max_input_tokens:
        return f"prompt of ~{tokens} tokens is over this target's {c.max_input_tokens}"
    if c.max_context_tokens is not None and tokens + (request.max_tokens or 0) > c.max_context_tokens:
        return f"~{tokens} prompt + {request.max_tokens or 0} output tokens exceed the context of {c.max_context_tokens}"
    return None


def cost_filter(tenant: Tenant, candidates: Sequence[Candidate]) -> Cut | Refusal:
    """Backends of a cost class the tenant may use."""
    kept, dropped = [], []
    for c in candidates:
        if c.cost_class in tenant.cost_classes:
            kept.append(c)
        else:
            allowed = ", ".join(tenant.cost_classes)
            dropped.append(_drop(c, "cost", f"cost class {c.cost_class}; {tenant.name} may use {allowed}"))
    if not kept:
        return Refusal(
            403, "cost", f"no backend of a cost class tenant {tenant.name} may use is left", tuple(dropped)
        )
    return Cut(tuple(kept), tuple(dropped))


def health_filter(
    candidates: Sequence[Candidate], health: Health, residency: TenantResidency
) -> Cut | Refusal:
    """Backends that are up, each deployment with its healthy replicas attached."""
    kept, dropped = [], []
    for c in candidates:
        if c.kind == "deployment":
            replicas = health.replicas.get(c.backend, ())
            if replicas:
                kept.append(replace(c, replicas=tuple(replicas)))
                continue
            dropped.append(_drop(c, "health", "no healthy replica"))
        elif c.backend in health.upstreams:
            kept.append(c)
        else:
            dropped.append(_drop(c, "health", "upstream is down"))
    if not kept:
        names = ", ".join(dict.fromkeys(c.backend for c in candidates))
        return Refusal(
            503,
            "unavailable",
            f"no backend the request may use is up ({names}; residency {residency}); it was not sent elsewhere",
            tuple(dropped),
        )
    return Cut(tuple(kept), tuple(dropped))


def pick_replica(
    replicas: Sequence[Replica],
    outstanding: Mapping[str, int],
    adapter: str | None,
    prefix_key: str | None,
    cap: int,
) -> Replica | None:
    """The replica for one attempt: the one holding the request's adapter (first) or prompt prefix (second),
    while it has at most `cap` more requests in flight than the least busy replica; otherwise the least busy.
    Ties go to the earlier replica (rotate the list between calls to spread them). None when there is none."""
    if not replicas:
        return None
    load = [outstanding.get(r.url, 0) for r in replicas]
    ceiling = min(load) + cap

    def affinity(i: int) -> int:
        if load[i] > ceiling:
            return 0
        r = replicas[i]
        return 2 * (adapter is not None and adapter in r.adapters) + (
            prefix_key is not None and prefix_key in r.prefixes
        )

    return replicas[min(range(len(replicas)), key=lambda i: (-affinity(i), load[i], i))]


# ------------------------------------------------------------------------------------------------ plan


def plan(
    policy: RoutingPolicy,
    pool: Pool,
    request: RouteRequest,
    tenant: Tenant,
    health: Health,
    estimate_tokens: Callable[[str], int] = bytes_estimate,
) -> RoutePlan | Refusal:
    """The request's fallback list: its route's targets resolved through the pool, then residency, prompt
    shape, cost class and health in that order. A step that leaves nothing refuses, with all that was dropped."""
    route = policy.route(request.model)
    if route is None:
        return Refusal(404, "model_not_found", f"The model `{request.model}` does not exist.")
    found, problems = resolve_route(route, pool, policy)
    dropped = [Dropped(route.name, "", "resolve", problem) for problem in problems]
    candidates: list[Candidate] = []
    for c in found:
        if any((c.backend, c.model) == (k.backend, k.model) for k in candidates):
            dropped.append(_drop(c, "resolve", "already a candidate through an earlier target"))
        else:
            candidates.append(c)
    if not candidates:
        return Refusal(503, "unavailable", f"route `{route.name}` names nothing that runs", tuple(dropped))
    tokens = estimate_tokens(request.prompt)
    residency = effective_residency(tenant, request)
    steps: list[Callable[[Sequence[Candidate]], Cut | Refusal]] = [
        lambda cs: residency_candidates(tenant, request, cs),
        lambda cs: shape_filter(request, cs, lambda _: tokens),
        lambda cs: cost_filter(tenant, cs),
        lambda cs: health_filter(cs, health, residency),
    ]
    kept: Sequence[Candidate] = candidates
    for step in steps:
        result = step(kept)
        if isinstance(result, Refusal):
            return replace(result, dropped=(*dropped, *result.dropped))
        kept = result.kept
        dropped += result.dropped
    return RoutePlan(
        route=route.name,
        tenant=tenant.name,
        residency=residency,
        input_tokens=tokens,
        candidates=tuple(kept),
        dropped=tuple(dropped),
        prefix_key=prefix_key(request.prompt, policy.replicas.prefix_bytes),
    )


def _drop(c: Candidate, step: Step, reason: str) -> Dropped:
    return Dropped(c.target, c.backend, step, reason)


def _bad(message: str) -> Refusal:
    return Refusal(400, "invalid_request", message)
