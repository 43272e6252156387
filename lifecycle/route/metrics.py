"""The router's Prometheus metrics: names, help, labels and buckets as data, and a guard that keeps every label
to a bounded set of values (anything unknown becomes "other"), so that a client sending random model names or
tenants cannot grow the number of series. The exporter (prometheus_client or OpenTelemetry) reads these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

OTHER = "other"
MetricKind = Literal["counter", "histogram", "gauge"]
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the exposed name; counters end in _total
    kind: MetricKind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


REQUESTS = MetricSpec(
    "lifecycle_router_requests_total",
    "counter",
    "Requests answered by the router, by route, tenant, registered version, cost class and outcome.",
    ("route", "tenant", "version", "cost_class", "outcome"),
)
REQUEST_DURATION = MetricSpec(
    "lifecycle_router_request_duration_seconds",
    "histogram",
    "Time from receiving a request to its last byte, fallbacks included.",
    ("route", "tenant", "version"),
    LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = MetricSpec(
    "lifecycle_router_time_to_first_token_seconds",
    "histogram",
    "Time from receiving a request to the first byte of its answer.",
    ("route", "tenant", "version"),
    LATENCY_BUCKETS,
)
TOKENS = MetricSpec(
    "lifecycle_router_tokens_total",
    "counter",
    "Tokens counted by the upstream, by direction (input or output).",
    ("route", "tenant", "version", "direction"),
)
COST = MetricSpec(
    "lifecycle_router_cost_usd_total",
    "counter",
    "Dollars charged to requests (price sheet for upstreams, amortised GPU cost for the pool).",
    ("route", "tenant", "version", "cost_class"),
)
FALLBACKS = MetricSpec(
    "lifecycle_router_fallbacks_total",
    "counter",
    "Requests moved to the next backend after an error or timeout before the first byte.",
    ("route", "backend", "error_type"),
)
UPSTREAM_ATTEMPTS = MetricSpec(
    "lifecycle_router_upstream_attempts_total",
    "counter",
    "Requests sent to each backend, by outcome.",
    ("backend", "provider", "outcome"),
)
METRICS = (REQUESTS, REQUEST_DURATION, TIME_TO_FIRST_TOKEN, TOKENS, COST, FALLBACKS, UPSTREAM_ATTEMPTS)

# Labels whose values the platform itself defines
FIXED_VALUES: Mapping[str, frozenset[str]] = {
    "outcome": frozenset({"ok", "error", "rejected", "timeout"}),
    "direction": frozenset({"input", "output"}),
    "cost_class": frozenset({"pool", "hosted", "frontier"}),  # lifecycle.route.policy.COST_CLASSES
    "error_type": frozenset({"timeout", "connect", "408", "429", "500", "502", "503", "504"}),
}


def version_label(model_name: str | None, version: int | None) -> str:
    """`name/3` for a registered version, `none` for an upstream that serves no registered version."""
    return f"{model_name}/{version}" if model_name and version is not None else "none"


@dataclass(frozen=True)
class LabelGuard:
    """The values each label may take; `labels` maps anything else to "other"."""

    allowed: Mapping[str, frozenset[str]]

    def labels(self, metric: MetricSpec, **values: str) -> dict[str, str]:
        """The label set for one observation of `metric`: every label given, each bounded."""
        if set(values) != set(metric.labels):
            raise ValueError(f"{metric.name} takes labels {metric.labels}, got {tuple(sorted(values))}")
        return {name: value if value in self.allowed[name] else OTHER for name, value in values.items()}

    def series_bound(self, metric: MetricSpec) -> int:
        """The most label combinations `metric` can ever have (each value allowed, or "other")."""
        bound = 1
        for name in metric.labels:
            bound *= len(self.allowed[name] | {OTHER})
        return bound


def label_guard(
    *,
    routes: Iterable[str],
    tenants: Iterable[str],
    versions: Iterable[str],
    backends: Iterable[str],
    providers: Iterable[str],
) -> LabelGuard:
    """A guard from what the policy and the pool name: build it again when the policy is reloaded."""
    allowed = {
        **FIXED_VALUES,
        "route": frozenset(routes),
        "tenant": frozenset(tenants),
        "version": frozenset(versions) | {"none"},
        "backend": frozenset(backends),
        "provider": frozenset(providers),
    }
    for metric in METRICS:
        if not _METRIC_NAME.match(metric.name):
            raise ValueError(f"not a Prometheus metric name: {metric.name}")
        for name in metric.labels:
            if not _LABEL_NAME.match(name) or name not in allowed:
                raise ValueError(f"{metric.name}: label {name} has no bounded set of values")
    return LabelGuard(allowed=allowed)
