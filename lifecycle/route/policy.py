"""`serving/routing.yaml`: who may call the router, what a client-facing model name may reach, and in which order.

The pool file says what runs; this file says who gets it. Tenants are API keys (stored as sha256 hashes, never
the keys) with the cost classes they may use, the residency their data needs and a budget. Upstreams are the
OpenAI-compatible endpoints outside the pool: hosted open-weight models and frontier APIs, each with its key's
environment variable (never the key), price, provider and region. Routes map a name clients put in "model" to an
ordered list of targets: a pool deployment (or an adapter it serves), `NAME@production` (the registered model the
pool pins, resolved through the pool file) or an upstream. Per request the router cuts that list by residency,
prompt shape and cost class, then drops what is not healthy (`lifecycle.route.decide`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from lifecycle.pool.schema import SERVED_NAME

# Where a request's data may go. A tenant's (or a request's) rule allows a set of backend residencies.
TenantResidency = Literal["self_hosted", "rented", "any"]
# Where a backend keeps the data it sees: the pool's two kinds, and `external` (a provider's own machines).
BackendResidency = Literal["self_hosted", "rented", "external"]
ALLOWED_RESIDENCIES: dict[str, frozenset[str]] = {
    "self_hosted": frozenset({"self_hosted"}),
    "rented": frozenset({"self_hosted", "rented"}),
    "any": frozenset({"self_hosted", "rented", "external"}),
}
# What a backend costs: the team's own pool (GPU-hours paid anyway), hosted open-weight APIs, frontier APIs.
CostClass = Literal["pool", "hosted", "frontier"]
COST_CLASSES: tuple[str, ...] = ("pool", "hosted", "frontier")

PRODUCTION = "@production"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def hash_key(key: str) -> str:
    """The sha256 (hex) of an API key, as the policy file stores it: `printf %s "$KEY" | sha256sum`."""
    return hashlib.sha256(key.encode()).hexdigest()


def _key_hash(value: str) -> str:
    if not _SHA256.fullmatch(value):
        raise ValueError(
            'expected the sha256 of an API key (64 lowercase hex digits: printf %s "$KEY" | sha256sum); '
            "the file never holds a key itself"
        )
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"expected the NAME of an environment variable holding the key (like OPENAI_API_KEY), not "
            f"{'a key' if len(value) > 20 else repr(value)}: the file never holds a key itself"
        )
    return value


KeyHash = Annotated[str, AfterValidator(_key_hash)]
EnvName = Annotated[str, AfterValidator(_env_name)]
Name = Annotated[str, Field(pattern=SERVED_NAME)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(Strict):
    """What a tenant may spend per period: reserved before each call, settled with the real usage after it."""

    period: Literal["hour", "day", "month"] = Field(
        description="The budget resets at the start of each UTC hour, day or calendar month."
    )
    tokens: int | None = Field(None, gt=0, description="Input plus output tokens per period, all backends.")
    dollars: float | None = Field(
        None,
        gt=0,
        description="Dollars per period at the upstreams' prices; pool deployments cost $0 per call here "
        "(their GPU-hours are paid whether or not they serve).",
    )

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.tokens is None and self.dollars is None:
            raise ValueError("a budget needs `tokens`, `dollars` or both (remove `budget` for no limit)")
        return self


class Tenant(Strict):
    """A caller: its API keys (hashed), what it may use and where its data may go."""

    name: Name = Field(description="The tenant's name, as spans, metrics and audit records show it.")
    keys: list[KeyHash] = Field(
        min_length=1,
        description="sha256 (hex) of each API key the tenant may present (several while a key is rotated).",
    )
    cost_classes: list[CostClass] = Field(
        min_length=1, description="Cost classes the tenant's requests may reach: pool, hosted, frontier."
    )
    residency: TenantResidency = Field(
        description="Where its data may go: self_hosted (machines the team runs), rented (also GPUs in the "
        "team's cloud account), any (also upstream providers). Holds through every fallback."
    )
    regions: list[str] | None = Field(
        None,
        min_length=1,
        description="When set, rented and external backends must be in one of these regions.",
    )
    budget: Budget | None = Field(None, description="Spending limit; none means unlimited.")


class Price(Strict):
    input_per_million: float = Field(ge=0, description="Dollars per million input (prompt) tokens.")
    output_per_million: float = Field(ge=0, description="Dollars per million output (completion) tokens.")


class Upstream(Strict):
    """An OpenAI-compatible endpoint outside the pool."""

    name: Name = Field(description="The name routes use for it.")
    cost_class: Literal["hosted", "frontier"] = Field(
        description="hosted: an open-weight model someone else serves; frontier: a closed frontier model."
    )
    provider: str = Field(
        min_length=1, description="gen_ai.provider.name on its spans (openai, anthropic, groq, ...)."
    )
    base_url: str = Field(pattern=r"^https?://\S+$", description="The OpenAI-compatible base URL (…/v1).")
    model: str = Field(min_length=1, description="The provider's model id, sent as the request's model.")
    api_key_env: EnvName | None = Field(
        None, description="The environment variable holding its API key, read at start-up (never the key)."
    )
    region: str = Field(min_length=1, description="Where the provider processes the data.")
    residency: BackendResidency = Field(
        "external",
        description="external: the provider's machines; rented: the team's cloud account; self_hosted: "
        "machines the team runs.",
    )
    price: Price
    structured_outputs: bool = Field(False, description="It honours response_format with a JSON schema.")
    tools: bool = Field(False, description="It honours `tools` (function calling).")
    max_context_tokens: int | None = Field(None, gt=0, description="Input plus output tokens it accepts.")


def _target_item(value: object) -> object:
    return {"target": value} if isinstance(value, str) else value


class Target(Strict):
    """One entry of a route's fallback order, with the prompt lengths it takes."""

    target: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*(@[a-z]+)?$",
        description="A pool deployment or adapter name, NAME@production (the registered model NAME at the "
        "version the pool pins), or an upstream name.",
    )
    min_input_tokens: int | None = Field(None, ge=0, description="Only prompts at least this long.")
    max_input_tokens: int | None = Field(None, gt=0, description="Only prompts at most this long.")

    @model_validator(mode="after")
    def _window(self) -> Target:
        low, high = self.min_input_tokens, self.max_input_tokens
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_input_tokens ({low}) is above max_input_tokens ({high}): nothing fits")
        if "@" in self.target and not self.target.endswith(PRODUCTION):
            alias = self.target.partition("@")[2]
            raise ValueError(f"unknown alias {alias!r}: a target names NAME@production only")
        return self

    @property
    def production_of(self) -> str | None:
        """The registered model name when the target is NAME@production."""
        return self.target.removesuffix(PRODUCTION) if self.target.endswith(PRODUCTION) else None


class Route(Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", description="The name clients put in the request's model."
    )
    targets: list[Annotated[Target, BeforeValidator(_target_item)]] = Field(
        min_length=1,
        description="Tried in this order: a name, or {target, min_input_tokens, max_input_tokens}.",
    )


class Timeouts(Strict):
    connect_s: float = Field(2.0, gt=0, description="To open a connection to a backend.")
    first_byte_s: float = Field(
        60.0, gt=0, description="To the first byte of the answer; past it the next backend is tried."
    )
    total_s: float = Field(600.0, gt=0, description="For the whole answer; a begun stream is never replayed.")


class Health(Strict):
    interval_s: float = Field(5.0, gt=0, description="Between checks of each replica and upstream.")
    timeout_s: float = Field(2.0, gt=0, description="For one check.")
    unhealthy_after: int = Field(2, gt=0, description="Failed checks in a row that take a backend out.")
    healthy_after: int = Field(1, gt=0, description="Passed checks in a row that bring it back.")

    @model_validator(mode="after")
    def _timeout_inside_interval(self) -> Health:
        if self.timeout_s > self.interval_s:
            raise ValueError(f"timeout_s ({self.timeout_s}) is longer than interval_s ({self.interval_s})")
        return self


class Replicas(Strict):
    affinity_cap: int = Field(
        4,
        ge=0,
        description="A replica holding the request's adapter or prompt prefix is preferred only while it has "
        "at most this many more requests in flight than the least busy one (0: only on ties).",
    )
    prefix_bytes: int = Field(
        1024, gt=0, description="Leading prompt bytes whose hash is the prefix-affinity key."
    )


class Limits(Strict):
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Larger request bodies get 413.")
    reserve_output_tokens: int = Field(
        1024, gt=0, description="Output tokens reserved from a budget when a request sets no max_tokens."
    )


class RoutingPolicy(Strict):
    """The whole file."""

    pool: str = Field(
        "pool.yaml", min_length=1, description="The pool file routes resolve against, relative to this file."
    )
    length_estimate: Literal["tokenizer", "bytes"] = Field(
        "bytes",
        description="How prompt length is measured for thresholds: a tokenizer where one is at hand, else "
        "UTF-8 bytes / 4.",
    )
    tenants: list[Tenant] = Field(default_factory=list)
    upstreams: list[Upstream] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    health: Health = Field(default_factory=Health)
    replicas: Replicas = Field(default_factory=Replicas)
    limits: Limits = Field(default_factory=Limits)

    def route(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)

    def upstream(self, name: str) -> Upstream | None:
        return next((u for u in self.upstreams if u.name == name), None)
