"""The router's decisions as pure functions: tables of cases, and random checks of the rules that must hold for
every input (residency through every fallback, affinity never past its cap)."""

from __future__ import annotations

import hmac
import itertools
import random
from typing import Any

import pytest
from route_world import deployment, healthy, policy, pool, request, tenant, upstream

from lifecycle.route import decide
from lifecycle.route.decide import (
    Health,
    Refusal,
    RoutePlan,
    authenticate,
    bytes_estimate,
    cost_filter,
    effective_residency,
    health_filter,
    parse_request,
    pick_replica,
    plan,
    prefix_key,
    residency_candidates,
    shape_filter,
)
from lifecycle.route.policy import RoutingPolicy, hash_key
from lifecycle.route.targets import Candidate, Replica, resolve_route

# A route across every kind of backend, in fallback order.
MIXED_POOL = pool(
    deployment("onprem", residency="self_hosted", structured=True, tools=True, max_model_len=4096),
    deployment("onprem-b", residency="self_hosted"),
    deployment("cloud", residency="rented", region="eu-west-1", tools=True),
)
MIXED_UPSTREAMS = (
    upstream("hosted-us", "hosted", region="us-east-1", structured=False, price=(0.9, 0.9)),
    upstream("vpc-llm", "hosted", residency="rented", region="eu-west-1", price=(0.5, 0.5)),
    upstream("frontier", "frontier", region="us-east-1"),
)
MIXED_TARGETS = ["onprem", "onprem-b", "cloud", "hosted-us", "vpc-llm", "frontier"]
ALL_BACKENDS = {*MIXED_TARGETS}


def mixed_policy(**rest: Any) -> RoutingPolicy:
    return policy({"chat": MIXED_TARGETS}, MIXED_UPSTREAMS, **rest)


def candidates() -> list[Candidate]:
    the_policy = mixed_policy()
    route = the_policy.route("chat")
    assert route is not None
    found, problems = resolve_route(route, MIXED_POOL, the_policy)
    assert problems == []
    return found


def backends(cut: Any) -> list[str]:
    assert not isinstance(cut, Refusal), cut
    return [c.backend for c in (cut.candidates if isinstance(cut, RoutePlan) else cut.kept)]


# ------------------------------------------------------------------------------------------------ auth

TENANTS = (tenant("a", keys=("key-a", "key-a-next")), tenant("b"))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic key-a", None),
        ("key-a", None),
        ("Bearer key-A", None),
        ("Bearer nope", None),
        ("Bearer key-a", "a"),
        ("bearer key-a", "a"),
        ("  Bearer   key-a-next  ", "a"),
        ("Bearer key-b", "b"),
        (f"Bearer {hash_key('key-a')}", None),  # the stored hash is not a key
    ],
)
def test_authenticate(header: str | None, expected: str | None) -> None:
    result = authenticate(policy({}, tenants=TENANTS), header)
    if expected is None:
        assert isinstance(result, Refusal) and result.status == 401 and result.code == "unauthorized"
        assert result.error_body()["error"]["type"] == "AuthenticationError"
    else:
        assert not isinstance(result, Refusal) and result.name == expected


def test_authenticate_compares_every_stored_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the first tenant's key costs as many comparisons as an unknown one."""
    calls = []
    real = hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        calls.append(a)
        return real(a, b)

    monkeypatch.setattr(decide.hmac, "compare_digest", counting)
    the_policy = policy({}, tenants=TENANTS)
    for header in ("Bearer key-a", "Bearer key-b", "Bearer unknown"):
        calls.clear()
        authenticate(the_policy, header)
        assert len(calls) == 3


# ------------------------------------------------------------------------------------------------ request


@pytest.mark.parametrize(
    ("body", "header", "problem"),
    [
        ([], None, "not a JSON object"),
        ({}, None, "names no `model`"),
        ({"model": ""}, None, "names no `model`"),
        ({"model": "chat", "prompt": "x", "max_tokens": 0}, None, "positive integer"),
        ({"model": "chat", "prompt": "x", "max_tokens": "5"}, None, "positive integer"),
        ({"model": "chat", "prompt": "x", "max_tokens": True}, None, "positive integer"),
        ({"model": "chat"}, None, "neither `messages` nor `prompt`"),
        ({"model": "chat", "messages": ["hi"]}, None, "neither"),
        ({"model": "chat", "prompt": [1, 2]}, None, "neither"),
        ({"model": "chat", "prompt": "x"}, "eu", "unknown residency 'eu'"),
    ],
)
def test_parse_request_refuses_malformed_bodies(body: object, header: str | None, problem: str) -> None:
    result = parse_request(body, header)
    assert isinstance(result, Refusal) and result.status == 400 and problem in result.message


@pytest.mark.parametrize(
    ("extra", "structured", "tools"),
    [
        ({}, False, False),
        ({"response_format": {"type": "text"}}, False, False),
        ({"response_format": {"type": "json_object"}}, True, False),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
            True,
            False,
        ),
        ({"guided_json": {"type": "object"}}, True, False),
        ({"structured_outputs": {"choice": ["a", "b"]}}, True, False),
        ({"tools": []}, False, False),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, False, True),
        ({"functions": [{"name": "f"}]}, False, True),
    ],
)
def test_parse_request_reads_the_prompt_shape(extra: dict[str, Any], structured: bool, tools: bool) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], **extra}
    result = parse_request(body)
    assert not isinstance(result, Refusal)
    assert (result.structured, result.tools) == (structured, tools)


def test_parse_request_collects_every_text_the_model_reads() -> None:
    body = {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "image_url"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup"}}],
        "max_completion_tokens": 7,
        "stream": True,
    }
    result = parse_request(body, "self_hosted")
    assert not isinstance(result, Refusal)
    assert result.prompt.startswith("be brief\npart one\n") and "lookup" in result.prompt
    assert (result.max_tokens, result.stream, result.residency) == (7, True, "self_hosted")
    completion = parse_request({"model": "m", "prompt": ["a", "b"], "max_tokens": 3})
    assert not isinstance(completion, Refusal) and completion.prompt == "a\nb" and completion.max_tokens == 3


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("abc", 1), ("abcd", 1), ("abcde", 2), ("é" * 4, 2)])
def test_bytes_estimate(text: str, tokens: int) -> None:
    assert bytes_estimate(text) == tokens


def test_prefix_key_needs_the_whole_prefix_and_ignores_what_follows() -> None:
    assert prefix_key("short", 16) is None
    key = prefix_key("x" * 16 + "tail one", 16)
    assert key is not None and key == prefix_key("x" * 16 + "another tail", 16)
    assert key != prefix_key("y" * 16, 16) and "x" not in key


# ------------------------------------------------------------------------------------------------ residency


@pytest.mark.parametrize(
    ("tenant_rule", "request_rule", "effective"),
    [
        ("any", None, "any"),
        ("any", "rented", "rented"),
        ("any", "self_hosted", "self_hosted"),
        ("rented", "any", "rented"),
        ("rented", "self_hosted", "self_hosted"),
        ("self_hosted", "any", "self_hosted"),
        ("self_hosted", "rented", "self_hosted"),
    ],
)
def test_a_request_can_tighten_residency_never_loosen_it(
    tenant_rule: str, request_rule: str | None, effective: str
) -> None:
    assert effective_residency(tenant(residency=tenant_rule), request(residency=request_rule)) == effective


@pytest.mark.parametrize(
    ("rule", "regions", "kept"),
    [
        ("self_hosted", None, ["onprem", "onprem-b"]),
        ("rented", None, ["onprem", "onprem-b", "cloud", "vpc-llm"]),
        ("any", None, MIXED_TARGETS),
        ("any", ["us-east-1"], ["onprem", "onprem-b", "hosted-us", "frontier"]),
        ("any", ["eu-west-1"], ["onprem", "onprem-b", "cloud", "vpc-llm"]),
        ("rented", ["us-east-1"], ["onprem", "onprem-b"]),
    ],
)
def test_residency_keeps_only_where_the_data_may_go(
    rule: str, regions: list[str] | None, kept: list[str]
) -> None:
    cut = residency_candidates(tenant(residency=rule, regions=regions), request(), candidates())
    assert backends(cut) == kept
    assert not isinstance(cut, Refusal)
    assert {d.backend for d in cut.dropped} == ALL_BACKENDS - set(kept)
    assert all(d.step == "residency" for d in cut.dropped)


def test_residency_with_nothing_left_refuses_and_sends_nowhere() -> None:
    only_external = [c for c in candidates() if c.residency == "external"]
    result = residency_candidates(tenant("reg", residency="self_hosted"), request(), only_external)
    assert isinstance(result, Refusal) and result.status == 403 and result.code == "residency"
    assert "reg" in result.message and "self_hosted" in result.message and "not sent" in result.message
    assert {d.backend for d in result.dropped} == {"hosted-us", "frontier"}


# ------------------------------------------------------------------------------------------------ shape


def _window(c: Candidate, low: int | None, high: int | None) -> Candidate:
    from dataclasses import replace

    return replace(c, min_input_tokens=low, max_input_tokens=high)


@pytest.mark.parametrize(
    ("req", "kept"),
    [
        (request(), MIXED_TARGETS),
        (request(structured=True), ["onprem", "vpc-llm", "frontier"]),
        (request(tools=True), ["onprem", "cloud", "hosted-us", "vpc-llm", "frontier"]),
        (request(structured=True, tools=True), ["onprem", "vpc-llm", "frontier"]),
        # onprem has a 4096-token context: 4000 prompt tokens + 200 output do not fit
        (
            request(prompt="x" * 16000, max_tokens=200),
            ["onprem-b", "cloud", "hosted-us", "vpc-llm", "frontier"],
        ),
        (request(prompt="x" * 16000, max_tokens=96), MIXED_TARGETS),
    ],
)
def test_shape_filter(req: Any, kept: list[str]) -> None:
    assert backends(shape_filter(req, candidates(), bytes_estimate)) == kept


@pytest.mark.parametrize(
    ("tokens", "low", "high", "fits"),
    [
        (10, None, None, True),
        (10, 10, None, True),
        (9, 10, None, False),
        (10, None, 10, True),
        (11, None, 10, False),
    ],
)
def test_shape_filter_length_windows(tokens: int, low: int | None, high: int | None, fits: bool) -> None:
    c = _window(candidates()[-1], low, high)
    result = shape_filter(request(), [c], lambda _: tokens)
    assert (not isinstance(result, Refusal)) == fits
    if isinstance(result, Refusal):
        assert result.status == 400 and result.code == "shape" and "tokens" in result.message


def test_shape_filter_refuses_tools_nowhere_supported() -> None:
    plain = [c for c in candidates() if not c.tools]
    result = shape_filter(request(tools=True), plain, bytes_estimate)
    assert isinstance(result, Refusal) and result.status == 400 and "tool-call parser" in result.message


# ------------------------------------------------------------------------------------------------ cost


@pytest.mark.parametrize(
    ("classes", "kept"),
    [
        (("pool",), ["onprem", "onprem-b", "cloud"]),
        (("hosted",), ["hosted-us", "vpc-llm"]),
        (("frontier",), ["frontier"]),
        (("pool", "frontier"), ["onprem", "onprem-b", "cloud", "frontier"]),
        (("pool", "hosted", "frontier"), MIXED_TARGETS),
    ],
)
def test_cost_filter(classes: tuple[str, ...], kept: list[str]) -> None:
    assert backends(cost_filter(tenant(cost_classes=classes), candidates())) == kept


def test_cost_filter_with_nothing_left_refuses() -> None:
    result = cost_filter(tenant(cost_classes=("frontier",)), candidates()[:3])
    assert isinstance(result, Refusal) and result.status == 403 and result.code == "cost"


# ------------------------------------------------------------------------------------------------ health


def test_health_filter_attaches_replicas_and_drops_what_is_down() -> None:
    the_policy = mixed_policy()
    cut = health_filter(candidates(), healthy(MIXED_POOL, the_policy, {"onprem", "frontier"}), "any")
    assert backends(cut) == ["onprem-b", "cloud", "hosted-us", "vpc-llm"]
    assert not isinstance(cut, Refusal)
    assert [len(c.replicas) for c in cut.kept] == [2, 2, 0, 0]
    assert {(d.backend, d.reason) for d in cut.dropped} == {
        ("onprem", "no healthy replica"),
        ("frontier", "upstream is down"),
    }
    nothing = health_filter(candidates(), Health(), "rented")
    assert isinstance(nothing, Refusal) and nothing.status == 503 and "residency rented" in nothing.message


# ------------------------------------------------------------------------------------------------ replica

R = [Replica(f"http://r{i}", "d") for i in range(3)]


def _with(i: int, adapters: tuple[str, ...] = (), prefixes: tuple[str, ...] = ()) -> list[Replica]:
    out = list(R)
    out[i] = Replica(R[i].url, "d", frozenset(adapters), frozenset(prefixes))
    return out


@pytest.mark.parametrize(
    ("replicas", "load", "adapter", "prefix", "cap", "chosen"),
    [
        (R, {}, None, None, 4, 0),  # ties: the first
        (R, {"http://r0": 2, "http://r1": 1}, None, None, 4, 2),  # least outstanding
        (_with(1, adapters=("lora",)), {}, "lora", None, 4, 1),  # adapter affinity
        (_with(1, adapters=("lora",)), {"http://r1": 4}, "lora", None, 4, 1),  # at the cap: still affine
        (_with(1, adapters=("lora",)), {"http://r1": 5}, "lora", None, 4, 0),  # past the cap: least busy
        (_with(1, adapters=("lora",)), {"http://r1": 1}, "lora", None, 0, 0),  # cap 0: affinity only on ties
        (_with(2, prefixes=("p",)), {"http://r2": 3}, None, "p", 4, 2),  # prefix affinity
        (_with(2, prefixes=("p",)), {}, None, "other", 4, 0),  # a prefix nobody holds
        # adapter outranks prefix
        (
            [
                R[0],
                Replica("http://r1", "d", prefixes=frozenset({"p"})),
                Replica("http://r2", "d", frozenset({"a"})),
            ],
            {},
            "a",
            "p",
            4,
            2,
        ),
        # both on one replica outrank either alone
        (
            [
                Replica("http://r0", "d", frozenset({"a"})),
                Replica("http://r1", "d", frozenset({"a"}), frozenset({"p"})),
                R[2],
            ],
            {"http://r1": 2},
            "a",
            "p",
            4,
            1,
        ),
        # two affine replicas: the less busy one
        (
            [R[0], Replica("http://r1", "d", frozenset({"a"})), Replica("http://r2", "d", frozenset({"a"}))],
            {"http://r1": 3, "http://r2": 1},
            "a",
            None,
            4,
            2,
        ),
    ],
)
def test_pick_replica(
    replicas: list[Replica],
    load: dict[str, int],
    adapter: str | None,
    prefix: str | None,
    cap: int,
    chosen: int,
) -> None:
    assert pick_replica(replicas, load, adapter, prefix, cap) == replicas[chosen]


def test_pick_replica_of_none_is_none() -> None:
    assert pick_replica([], {}, "a", "p", 4) is None


def test_affinity_never_overloads_a_replica_random() -> None:
    """For any loads and holdings: the pick is never more than `cap` above the least busy; without affinity in
    reach it is the least busy; and with an affine replica in reach, an affine one is picked."""
    rng = random.Random(12)
    for _ in range(3000):
        n = rng.randint(1, 6)
        cap = rng.randint(0, 5)
        replicas = [
            Replica(
                f"http://r{i}",
                "d",
                frozenset({"a"}) if rng.random() < 0.3 else frozenset(),
                frozenset({"p"}) if rng.random() < 0.3 else frozenset(),
            )
            for i in range(n)
        ]
        load = {r.url: rng.randint(0, 12) for r in replicas}
        adapter = rng.choice(["a", None])
        prefix = rng.choice(["p", None])
        chosen = pick_replica(replicas, load, adapter, prefix, cap)
        assert chosen is not None
        least = min(load.values())
        assert load[chosen.url] <= least + cap
        reachable = [
            r
            for r in replicas
            if load[r.url] <= least + cap
            and ((adapter in r.adapters) or (prefix is not None and prefix in r.prefixes))
        ]
        if reachable:
            assert chosen in reachable
        else:
            assert load[chosen.url] == least


# ------------------------------------------------------------------------------------------------ plan


def test_plan_keeps_the_route_order_and_records_every_drop() -> None:
    the_policy = mixed_policy()
    who = tenant(cost_classes=("pool", "hosted"), regions=["eu-west-1"])
    result = plan(
        the_policy, MIXED_POOL, request(tools=True), who, healthy(MIXED_POOL, the_policy, {"cloud"})
    )
    assert isinstance(result, RoutePlan)
    assert backends(result) == ["onprem", "vpc-llm"]
    assert [(d.backend, d.step) for d in result.dropped] == [
        ("hosted-us", "residency"),
        ("frontier", "residency"),
        ("onprem-b", "shape"),
        ("cloud", "health"),
    ]
    assert (result.route, result.tenant, result.residency, result.input_tokens) == ("chat", "acme", "any", 2)
    assert result.candidates[0].replicas and result.candidates[0].quantization == "FP8_DYNAMIC"


def test_plan_unknown_model_is_404() -> None:
    the_policy = mixed_policy()
    result = plan(the_policy, MIXED_POOL, request("nope"), tenant(), healthy(MIXED_POOL, the_policy))
    assert isinstance(result, Refusal) and result.status == 404
    assert result.error_body() == {
        "error": {
            "message": "The model `nope` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": "model_not_found",
        }
    }


def test_plan_uses_the_estimator_it_is_given() -> None:
    the_policy = policy({"chat": [{"target": "frontier", "max_input_tokens": 100}]}, (upstream("frontier"),))
    health = healthy(pool(), the_policy)
    assert isinstance(plan(the_policy, pool(), request(prompt="x" * 400), tenant(), health), RoutePlan)
    refused = plan(the_policy, pool(), request(prompt="x" * 400), tenant(), health, lambda text: len(text))
    assert isinstance(refused, Refusal) and refused.code == "shape"


def test_production_resolves_to_every_deployment_serving_the_pinned_version() -> None:
    the_pool = pool(
        deployment("support", model="demo-support", version=3, residency="self_hosted"),
        deployment("support-eu", model="demo-support", version=3, residency="rented", region="eu-west-1"),
        deployment("base", base=True, adapters=(("tickets", "demo-tickets", 2),)),
    )
    the_policy = policy({"chat": ["demo-support@production", "demo-tickets@production", "support"]})
    result = plan(the_policy, the_pool, request(), tenant(), healthy(the_pool, the_policy))
    assert isinstance(result, RoutePlan)
    assert [(c.backend, c.model, c.version) for c in result.candidates] == [
        ("support", "support", 3),
        ("support-eu", "support-eu", 3),
        ("base", "tickets", 2),
    ]
    assert (
        result.candidates[2].adapter == "tickets" and result.candidates[2].registered_model == "demo-tickets"
    )
    assert [(d.target, d.step) for d in result.dropped] == [("support", "resolve")]  # a duplicate


def test_a_production_target_during_a_canary_is_dropped_not_guessed() -> None:
    the_pool = pool(
        deployment("support", model="demo-support", version=3),
        deployment("support-canary", model="demo-support", version=4),
    )
    the_policy = policy({"chat": ["demo-support@production", "support"]})
    result = plan(the_policy, the_pool, request(), tenant(), healthy(the_pool, the_policy))
    assert isinstance(result, RoutePlan) and backends(result) == ["support"]
    assert result.dropped[0].step == "resolve" and "pinned at 2 versions" in result.dropped[0].reason
    alone = plan(policy({"chat": ["demo-support@production"]}), the_pool, request(), tenant(), Health())
    assert isinstance(alone, Refusal) and alone.status == 503 and alone.dropped


# ---- the fault: a restricted tenant stays self-hosted through every fallback


def _every_health() -> list[frozenset[str]]:
    names = sorted(ALL_BACKENDS)
    return [frozenset(down) for k in range(len(names) + 1) for down in itertools.combinations(names, k)]


@pytest.mark.parametrize("rule", ["self_hosted", "rented"])
def test_a_restricted_tenant_stays_inside_its_residency_whatever_is_down(rule: str) -> None:
    the_policy = mixed_policy()
    allowed = {"self_hosted"} if rule == "self_hosted" else {"self_hosted", "rented"}
    inside = {c.backend for c in candidates() if c.residency in allowed}
    who = tenant("regulated", residency=rule)
    for down in _every_health():
        result = plan(the_policy, MIXED_POOL, request(), who, healthy(MIXED_POOL, the_policy, down))
        if inside - down:
            assert isinstance(result, RoutePlan), (down, result)
            assert [c.backend for c in result.candidates] == [b for b in MIXED_TARGETS if b in inside - down]
            assert all(c.residency in allowed for c in result.candidates)
        else:
            assert isinstance(result, Refusal), (down, result)
            assert (result.status, result.code) == (503, "unavailable")
            assert rule in result.message and "not sent elsewhere" in result.message
            # what was up but outside the residency was never a candidate: it was cut first
            assert {d.backend for d in result.dropped if d.step == "residency"} == ALL_BACKENDS - inside


def test_a_request_asking_for_self_hosted_is_held_to_it_random() -> None:
    """Random tenants, requests, shapes and health: every backend in any plan satisfies the effective
    residency, and appears in the route's order."""
    rng = random.Random(7)
    the_policy = mixed_policy()
    rules = ["self_hosted", "rented", "any"]
    for _ in range(400):
        who = tenant(
            residency=rng.choice(rules),
            cost_classes=tuple(rng.sample(["pool", "hosted", "frontier"], rng.randint(1, 3))),
            regions=rng.choice([None, ["us-east-1"], ["eu-west-1"]]),
        )
        req = request(
            prompt="x" * rng.choice([10, 17000]),
            structured=rng.random() < 0.3,
            tools=rng.random() < 0.3,
            residency=rng.choice([None, *rules]),
        )
        down = frozenset(b for b in ALL_BACKENDS if rng.random() < 0.3)
        result = plan(the_policy, MIXED_POOL, req, who, healthy(MIXED_POOL, the_policy, down))
        if isinstance(result, Refusal):
            assert result.status in (400, 403, 503)
            continue
        rule = effective_residency(who, req)
        names = [c.backend for c in result.candidates]
        assert names == [b for b in MIXED_TARGETS if b in names]
        for c in result.candidates:
            assert c.residency in {"self_hosted": {"self_hosted"}, "rented": {"self_hosted", "rented"}}.get(
                rule, {"self_hosted", "rented", "external"}
            )
            assert c.backend not in down and c.cost_class in who.cost_classes
            assert not who.regions or c.residency == "self_hosted" or c.region in who.regions
