"""Small builders for routing tests: pools, policies and requests as data, no servers."""

from __future__ import annotations

from typing import Any

from lifecycle.pool.schema import Deployment, Pool
from lifecycle.route.decide import Health, RouteRequest
from lifecycle.route.policy import RoutingPolicy, Tenant, Upstream, hash_key
from lifecycle.route.targets import Replica

SHA = "a" * 64
BASE_SHA = "b" * 64


def deployment(
    name: str,
    *,
    residency: str = "self_hosted",
    region: str | None = None,
    model: str | None = None,
    version: int = 1,
    structured: bool = False,
    tools: bool = False,
    max_model_len: int | None = None,
    adapters: tuple[tuple[str, str, int], ...] = (),
    base: bool = False,
) -> Deployment:
    """A deployment; `adapters` are (served name, registered model, version) riding on its weights."""
    digest = BASE_SHA if base else SHA
    served: dict[str, Any] = (
        {"kind": "base", "source": "builtin:tiny-llama", "manifest_digest": digest}
        if base
        else {
            "kind": "registered",
            "name": model or f"{name}-model",
            "version": version,
            "artifact": f"file:///store/{name}",
            "manifest_digest": digest,
            "quantization": {"scheme": "FP8_DYNAMIC", "config_sha256": SHA},
            "recipe_sha256": SHA,
            "base_model": "/models/tiny",
        }
    )
    args: dict[str, Any] = {"max_model_len": max_model_len}
    if structured:
        args["structured_outputs_backend"] = "xgrammar"
    if tools:
        args["tool_call_parser"] = "hermes"
    return Deployment.model_validate(
        {
            "name": name,
            "model": served,
            "engine": {"args": args},
            "adapters": [
                {
                    "name": a,
                    "model": m,
                    "version": v,
                    "artifact": f"file:///store/{a}",
                    "manifest_digest": SHA,
                    "base_manifest_digest": digest,
                    "recipe_sha256": SHA,
                }
                for a, m, v in adapters
            ],
            "residency": residency,
            "region": region if region or residency != "rented" else "eu-west-1",
            "price_per_gpu_hour": 0.0,
        }
    )


def upstream(
    name: str,
    cost_class: str = "frontier",
    *,
    residency: str = "external",
    region: str = "us-east-1",
    structured: bool = True,
    tools: bool = True,
    price: tuple[float, float] = (2.0, 8.0),
    max_context_tokens: int | None = None,
) -> Upstream:
    return Upstream.model_validate(
        {
            "name": name,
            "cost_class": cost_class,
            "provider": "openai" if cost_class == "frontier" else "together_ai",
            "base_url": f"https://{name}.example/v1",
            "model": f"{name}-model-id",
            "api_key_env": "UPSTREAM_KEY",
            "region": region,
            "residency": residency,
            "price": {"input_per_million": price[0], "output_per_million": price[1]},
            "structured_outputs": structured,
            "tools": tools,
            "max_context_tokens": max_context_tokens,
        }
    )


def tenant(
    name: str = "acme",
    residency: str = "any",
    cost_classes: tuple[str, ...] = ("pool", "hosted", "frontier"),
    regions: list[str] | None = None,
    keys: tuple[str, ...] | None = None,
) -> Tenant:
    return Tenant.model_validate(
        {
            "name": name,
            "keys": [hash_key(k) for k in (keys or (f"key-{name}",))],
            "cost_classes": list(cost_classes),
            "residency": residency,
            "regions": regions,
        }
    )


def policy(
    routes: dict[str, list[Any]],
    upstreams: tuple[Upstream, ...] = (),
    tenants: tuple[Tenant, ...] = (),
    **rest: Any,
) -> RoutingPolicy:
    return RoutingPolicy.model_validate(
        {
            "tenants": [t.model_dump() for t in tenants],
            "upstreams": [u.model_dump() for u in upstreams],
            "routes": [{"name": n, "targets": t} for n, t in routes.items()],
            **rest,
        }
    )


def pool(*deployments: Deployment) -> Pool:
    return Pool(deployments=list(deployments))


def request(model: str = "chat", prompt: str = "hello", **rest: Any) -> RouteRequest:
    return RouteRequest(model=model, prompt=prompt, **rest)


def healthy(
    the_pool: Pool, the_policy: RoutingPolicy, down: set[str] | frozenset[str] = frozenset()
) -> Health:
    """Every deployment (two replicas each) and upstream up, except the backends named in `down`."""
    return Health(
        replicas={
            d.name: tuple(Replica(f"http://{d.name}-{i}:8000", d.name) for i in range(2))
            for d in the_pool.deployments
            if d.name not in down
        },
        upstreams=frozenset(u.name for u in the_policy.upstreams if u.name not in down),
    )
