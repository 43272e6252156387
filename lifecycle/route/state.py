"""What the router's requests read and need: the state swapped whole on a reload or a new pool (`RouterState`),
and what a request in flight asks of the router carrying it (`Host`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.trace import Tracer

from lifecycle.pool.schema import Pool
from lifecycle.route.audit import AuditLog
from lifecycle.route.budget import BudgetStore
from lifecycle.route.load import LoadedPolicy
from lifecycle.route.metrics import LabelGuard, label_guard, version_label
from lifecycle.route.policy import RoutingPolicy
from lifecycle.route.prometheus import RouterMetrics
from lifecycle.route.targets import ENGINE_PROVIDER, Replica, resolve_route
from lifecycle.route.upstream import Client

log = logging.getLogger(__name__)

# Choose one of the replicas given their requests in flight (by URL); decide.pick_replica with its other inputs
Pick = Callable[[Sequence[Replica], Mapping[str, int]], Replica | None]


@dataclass(frozen=True)
class RouterState:
    """Everything a request reads, swapped whole on a reload or a new pool: one request sees one state."""

    loaded: LoadedPolicy
    pool: Pool
    guard: LabelGuard
    upstream_keys: Mapping[str, str]  # upstream name -> its API key

    @property
    def policy(self) -> RoutingPolicy:
        return self.loaded.policy


def build_state(loaded: LoadedPolicy, pool: Pool, env: Mapping[str, str]) -> RouterState:
    """The state for a policy and a pool: bounded metric labels from what they name, and the upstreams' keys
    (from `env`, read once where the router is started)."""
    policy = loaded.policy
    versions = {
        version_label(c.registered_model, c.version)
        for route in policy.routes
        for c in resolve_route(route, pool, policy)[0]
    }
    guard = label_guard(
        routes=[r.name for r in policy.routes],
        tenants=[t.name for t in policy.tenants],
        versions=versions,
        backends={u.name for u in policy.upstreams} | {d.name for d in pool.deployments},
        providers={u.provider for u in policy.upstreams} | {ENGINE_PROVIDER},
    )
    keys = {u.name: env[u.api_key_env] for u in policy.upstreams if u.api_key_env and env.get(u.api_key_env)}
    for u in policy.upstreams:
        if u.api_key_env and u.name not in keys:
            log.warning("upstream %s: %s is not set; it is called without a key", u.name, u.api_key_env)
    return RouterState(loaded=loaded, pool=pool, guard=guard, upstream_keys=keys)


class Host(Protocol):
    """What a request in flight needs from the router that carries it."""

    hmac_key: bytes
    hmac_key_id: str
    audit: AuditLog
    budgets: BudgetStore | None
    metrics: RouterMetrics
    tracer: Tracer
    client: Client | None

    def take(
        self, replicas: Sequence[Replica], model: str, pick: Pick, tried: set[str]
    ) -> Replica | None: ...
    def took(self, url: str, model: str) -> None: ...
    def release(self, url: str, model: str, prefix: str | None = None) -> None: ...
    def unreachable(self, key: str) -> None: ...
    def write_later(self, write: Callable[[], None]) -> None: ...
    def open_flight(self) -> None: ...
    def close_flight(self) -> None: ...
