"""The router's Prometheus metrics in a registry of its own (the only module importing prometheus_client): the
definitions of `lifecycle.route.metrics`, every label passed through its guard so that series stay bounded."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from lifecycle.route.metrics import METRICS, LabelGuard, MetricSpec

POLICY_RELOADS = MetricSpec(
    "lifecycle_router_policy_reloads_total",
    "counter",
    "Policy files read on change: swapped in (ok) or refused and the policy before kept serving (rejected).",
    ("outcome",),
)
_RELOAD_GUARD = LabelGuard(allowed={"outcome": frozenset({"ok", "rejected"})})
CHILDREN_KEPT = (
    4096  # label sets remembered as given (a client's model name may be anything); past it, start over
)


class RouterMetrics:
    """Counters and histograms by `MetricSpec`; `guard` is replaced when the policy or the pool changes. The child
    series of each label set as given is looked up once and kept (guarding and prometheus_client's own lookup cost
    more than the count itself), until the guard changes."""

    def __init__(self, guard: LabelGuard) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._guard = guard
        self._children: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        for spec in (*METRICS, POLICY_RELOADS):
            if spec.kind == "counter":
                self._counters[spec.name] = Counter(spec.name, spec.help, spec.labels, registry=self.registry)
            elif spec.kind == "histogram":
                self._histograms[spec.name] = Histogram(
                    spec.name, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets
                )

    @property
    def guard(self) -> LabelGuard:
        return self._guard

    @guard.setter
    def guard(self, guard: LabelGuard) -> None:
        self._guard = guard
        self._children = {}  # what was "other" may be allowed now, and the other way round

    def _child(self, family: Counter | Histogram, spec: MetricSpec, labels: dict[str, str]) -> Any:
        key = (spec.name, tuple(labels.items()))
        children = self._children
        child = children.get(key)
        if child is None:
            child = family.labels(**self._guard.labels(spec, **labels))
            if len(children) >= CHILDREN_KEPT:
                children = self._children = {}
            children[key] = child
        return child

    def inc(self, spec: MetricSpec, amount: float = 1.0, /, **labels: str) -> None:
        if amount > 0:
            self._child(self._counters[spec.name], spec, labels).inc(amount)

    def observe(self, spec: MetricSpec, value: float, /, **labels: str) -> None:
        self._child(self._histograms[spec.name], spec, labels).observe(value)

    def reloaded(self, ok: bool) -> None:
        outcome = "ok" if ok else "rejected"
        self._counters[POLICY_RELOADS.name].labels(
            **_RELOAD_GUARD.labels(POLICY_RELOADS, outcome=outcome)
        ).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type, for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
