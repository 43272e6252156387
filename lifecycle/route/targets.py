"""What a route's target names, resolved through the pool file: the backends a request may be sent to, each with
the facts the routing steps decide on (residency, cost class, price, what the engine was started with) and the
ones its spans carry (registered version, quantization). Pure: the pool and the policy come in as data."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from lifecycle.pool.aliases import pinned_versions
from lifecycle.pool.schema import Adapter, Deployment, Pool, RegisteredModel
from lifecycle.route.policy import BackendResidency, CostClass, Price, Route, RoutingPolicy, Target, Upstream

ENGINE_PROVIDER = "vllm"  # gen_ai.provider.name for the pool's own deployments


@dataclass(frozen=True)
class Replica:
    """One running server of a deployment, as health checks last saw it: the adapters loaded on it and the
    prompt-prefix keys recently sent to it (hashes, never text)."""

    url: str
    deployment: str
    adapters: frozenset[str] = frozenset()
    prefixes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Candidate:
    """One backend a request may go to. `backend` keys health and replicas (a deployment or upstream name);
    `model` is what the request's "model" becomes (a served name, or the provider's model id)."""

    target: str
    backend: str
    model: str
    kind: Literal["deployment", "upstream"]
    cost_class: CostClass
    residency: BackendResidency
    region: str | None
    provider: str
    price: Price | None  # per million tokens; None for the pool (its GPU-hours are paid anyway)
    structured_outputs: bool
    tools: bool
    max_context_tokens: int | None
    min_input_tokens: int | None = None
    max_input_tokens: int | None = None
    adapter: str | None = None
    registered_model: str | None = None
    version: int | None = None
    quantization: str | None = None
    quantization_sha256: str | None = None
    replicas: tuple[Replica, ...] = ()


def resolve_route(route: Route, pool: Pool, policy: RoutingPolicy) -> tuple[list[Candidate], list[str]]:
    """Every target of `route`, in order, as candidates (a `NAME@production` target can be several deployments
    serving the pinned version); and why each target that resolves to nothing does not."""
    found: list[Candidate] = []
    problems: list[str] = []
    for target in route.targets:
        resolved = resolve_target(target, pool, policy)
        if isinstance(resolved, str):
            problems.append(resolved)
        else:
            found += resolved
    return found, problems


def resolve_target(target: Target, pool: Pool, policy: RoutingPolicy) -> list[Candidate] | str:
    """The candidates one target names, or why it names none."""
    model = target.production_of
    if model is not None:
        return _production(target, model, pool)
    name = target.target
    deployment = pool.deployment(name)
    if deployment is not None:
        return [_deployment(target, deployment)]
    for d in pool.deployments:
        adapter = next((a for a in d.adapters if a.name == name), None)
        if adapter is not None:
            return [_deployment(target, d, adapter)]
    upstream = policy.upstream(name)
    if upstream is not None:
        return [_upstream(target, upstream)]
    names = [n for d in pool.deployments for n in d.served_names] + [u.name for u in policy.upstreams]
    return _unknown(f"{name!r} is no deployment, adapter or upstream", name, names)


def _production(target: Target, model: str, pool: Pool) -> list[Candidate] | str:
    pinned = pinned_versions(pool)
    versions = pinned.get(model)
    if not versions:
        return _unknown(f"the pool pins no version of registered model {model!r}", model, pinned)
    if len(versions) > 1:
        listed = ", ".join(f"v{v} ({', '.join(sorted(versions[v]))})" for v in sorted(versions))
        return (
            f"registered model {model!r} is pinned at {len(versions)} versions ({listed}), so it has no "
            "production version until the pool pins one; name a deployment instead"
        )
    found = []
    for d in pool.deployments:
        if isinstance(d.model, RegisteredModel) and d.model.name == model:
            found.append(_deployment(target, d))
        found += [_deployment(target, d, a) for a in d.adapters if a.model == model]
    return found


def _unknown(message: str, name: str, choices: Iterable[str]) -> str:
    guess = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"{message}; did you mean {guess[0]!r}?" if guess else message


def _deployment(target: Target, d: Deployment, adapter: Adapter | None = None) -> Candidate:
    args = d.engine.args
    registered = d.model if isinstance(d.model, RegisteredModel) else None
    return Candidate(
        target=target.target,
        backend=d.name,
        model=adapter.name if adapter else d.name,
        kind="deployment",
        cost_class="pool",
        residency=d.residency,
        region=d.region,
        provider=ENGINE_PROVIDER,
        price=None,
        structured_outputs=args.structured_outputs_backend is not None,
        tools=args.tool_call_parser is not None,
        max_context_tokens=args.max_model_len,
        min_input_tokens=target.min_input_tokens,
        max_input_tokens=target.max_input_tokens,
        adapter=adapter.name if adapter else None,
        registered_model=adapter.model if adapter else registered.name if registered else None,
        version=adapter.version if adapter else registered.version if registered else None,
        quantization=registered.quantization.scheme if registered else None,
        quantization_sha256=registered.quantization.config_sha256 if registered else None,
    )


def _upstream(target: Target, u: Upstream) -> Candidate:
    return Candidate(
        target=target.target,
        backend=u.name,
        model=u.model,
        kind="upstream",
        cost_class=u.cost_class,
        residency=u.residency,
        region=u.region,
        provider=u.provider,
        price=u.price,
        structured_outputs=u.structured_outputs,
        tools=u.tools,
        max_context_tokens=u.max_context_tokens,
        min_input_tokens=target.min_input_tokens,
        max_input_tokens=target.max_input_tokens,
    )
