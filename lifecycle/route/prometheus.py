"""The router's Prometheus metrics in a registry of its own (the only module importing prometheus_client): the
definitions of `lifecycle.route.metrics`, every label passed through its guard so that series stay bounded."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from lifecycle.route.metrics import METRICS, LabelGuard, MetricSpec

POLICY_RELOADS = MetricSpec(
    "lifecycle_router_policy_reloads_total",
    "counter",
    "Policy files read on change: swapped in (ok) or refused and the policy before kept serving (rejected).",
    ("outcome",),
)
_RELOAD_GUARD = LabelGuard(allowed={"outcome": frozenset({"ok", "rejected"})})


class RouterMetrics:
    """Counters and histograms by `MetricSpec`; `guard` is replaced when the policy or the pool changes."""

    def __init__(self, guard: LabelGuard) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.guard = guard
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        for spec in (*METRICS, POLICY_RELOADS):
            if spec.kind == "counter":
                self._counters[spec.name] = Counter(spec.name, spec.help, spec.labels, registry=self.registry)
            elif spec.kind == "histogram":
                self._histograms[spec.name] = Histogram(
                    spec.name, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets
                )

    def inc(self, spec: MetricSpec, amount: float = 1.0, /, **labels: str) -> None:
        if amount > 0:
            self._counters[spec.name].labels(**self.guard.labels(spec, **labels)).inc(amount)

    def observe(self, spec: MetricSpec, value: float, /, **labels: str) -> None:
        self._histograms[spec.name].labels(**self.guard.labels(spec, **labels)).observe(value)

    def reloaded(self, ok: bool) -> None:
        outcome = "ok" if ok else "rejected"
        self._counters[POLICY_RELOADS.name].labels(
            **_RELOAD_GUARD.labels(POLICY_RELOADS, outcome=outcome)
        ).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type, for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
