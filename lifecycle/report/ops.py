"""The operations view: per deployment, what its vLLM replicas' /metrics say (prompt-cache hit rate, KV-cache
use, queue length, time to first token) and what the pool runner saw (restarts, out-of-memory kills). Pure over
Prometheus text and the pool's status; `dashboard()` is the same view as a Grafana dashboard over Prometheus.

Metric names are the installed vLLM's (vllm/v1/metrics/loggers.py, label `model_name`): counters are exposed with
`_total` appended (`vllm:prefix_cache_hits_total`). Counters count since the server started; given an earlier
scrape of the same replicas the rates cover the time between the two.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lifecycle.route.metrics import COST, FALLBACKS, REQUESTS, TIME_TO_FIRST_TOKEN, TOKENS

PREFIX_HITS = "vllm:prefix_cache_hits"
PREFIX_QUERIES = "vllm:prefix_cache_queries"
KV_USAGE = "vllm:kv_cache_usage_perc"
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
TTFT = "vllm:time_to_first_token_seconds"
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
PREEMPTIONS = "vllm:num_preemptions"
OOM = re.compile(r"out of memory|\bOOM\b|OutOfMemory", re.IGNORECASE)
DIED = re.compile(r"^(?:\S+ )?(?P<replica>\S+) died")

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?$"
)
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    """Samples from Prometheus' text exposition format (comments and malformed lines skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = {
            key: value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            for key, value in _LABEL.findall(match.group("labels") or "")
        }
        try:
            value = float(match.group("value"))
        except ValueError:
            continue
        out.append(Sample(match.group("name"), labels, value))
    return out


def _total(samples: Iterable[Sample], name: str) -> float | None:
    """Sum of a counter or gauge over every series (a counter under its name or with `_total`)."""
    values = [s.value for s in samples if s.name in (name, name + "_total")]
    return sum(values) if values else None


def _values(samples: Iterable[Sample], name: str) -> list[float]:
    return [s.value for s in samples if s.name == name]


def _buckets(samples: Iterable[Sample], name: str) -> dict[float, float]:
    """Cumulative bucket counts by upper bound, summed over series."""
    out: dict[float, float] = {}
    for s in samples:
        if s.name == name + "_bucket" and "le" in s.labels:
            bound = math.inf if s.labels["le"] in ("+Inf", "Inf") else float(s.labels["le"])
            out[bound] = out.get(bound, 0.0) + s.value
    return out


def quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated inside its bucket as Prometheus'
    histogram_quantile does (the highest finite bound when it falls in +Inf)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


@dataclass(frozen=True)
class DeploymentOps:
    name: str
    replicas: int  # replicas scraped
    prefix_cache_hit_rate: float | None  # hits / queries, tokens
    kv_cache_usage: float | None  # the fullest replica, 0..1
    waiting: float | None  # requests queued, all replicas
    running: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_mean_s: float | None
    prompt_tokens: float | None
    generation_tokens: float | None
    preemptions: float | None
    restarts: int
    oom_kills: int
    deaths: int


@dataclass(frozen=True)
class OpsReport:
    deployments: tuple[DeploymentOps, ...]
    events: tuple[str, ...]  # the pool's recent events, as the runner wrote them


def _diff(now: float | None, before: float | None) -> float | None:
    if now is None:
        return None
    return now - before if before is not None and now >= before else now  # a restart reset the counter


def deployment_ops(
    name: str,
    scrapes: Sequence[str],
    *,
    before: Sequence[str] = (),
    restarts: int = 0,
    events: Sequence[str] = (),
    replica_names: Sequence[str] = (),
) -> DeploymentOps:
    """One deployment from its replicas' /metrics texts (and, for rates, an earlier scrape of them)."""
    now = [s for text in scrapes for s in parse_prometheus(text)]
    then = [s for text in before for s in parse_prometheus(text)]
    hits = _diff(_total(now, PREFIX_HITS), _total(then, PREFIX_HITS))
    queries = _diff(_total(now, PREFIX_QUERIES), _total(then, PREFIX_QUERIES))
    buckets = _buckets(now, TTFT)
    if then:
        earlier = _buckets(then, TTFT)
        if all(buckets.get(b, 0.0) >= c for b, c in earlier.items()):
            buckets = {b: c - earlier.get(b, 0.0) for b, c in buckets.items()}
    ttft_sum = _diff(_total(now, TTFT + "_sum"), _total(then, TTFT + "_sum"))
    ttft_count = _diff(_total(now, TTFT + "_count"), _total(then, TTFT + "_count"))
    usage = _values(now, KV_USAGE)
    mine = [e for e in events if _about(e, name, replica_names)]
    return DeploymentOps(
        name=name,
        replicas=len(scrapes),
        prefix_cache_hit_rate=hits / queries if hits is not None and queries else None,
        kv_cache_usage=max(usage) if usage else None,
        waiting=_total(now, WAITING),
        running=_total(now, RUNNING),
        ttft_p50_s=quantile(buckets, 0.5),
        ttft_p95_s=quantile(buckets, 0.95),
        ttft_mean_s=ttft_sum / ttft_count if ttft_sum is not None and ttft_count else None,
        prompt_tokens=_diff(_total(now, PROMPT_TOKENS), _total(then, PROMPT_TOKENS)),
        generation_tokens=_diff(_total(now, GENERATION_TOKENS), _total(then, GENERATION_TOKENS)),
        preemptions=_diff(_total(now, PREEMPTIONS), _total(then, PREEMPTIONS)),
        restarts=restarts,
        oom_kills=sum(1 for e in mine if OOM.search(e)),
        deaths=sum(1 for e in mine if DIED.match(e)),
    )


def _about(event: str, deployment: str, replica_names: Sequence[str]) -> bool:
    names = [*replica_names, deployment + "/"]
    return any(n in event for n in names)


def ops_report(
    scrapes: Mapping[str, Sequence[str]],
    status: Mapping[str, Any] | None = None,
    *,
    before: Mapping[str, Sequence[str]] | None = None,
) -> OpsReport:
    """Every deployment with scrapes, or named by `status` (a `lifecycle serve --status --json` document:
    restarts per replica, the runner's events)."""
    restarts: dict[str, int] = {}
    replicas: dict[str, list[str]] = {}
    for d in (status or {}).get("deployments", []):
        restarts[d["name"]] = sum(int(r.get("restarts", 0)) for r in d.get("replicas", []))
        replicas[d["name"]] = [str(r.get("name", "")) for r in d.get("replicas", [])]
    events = tuple(str(e) for e in (status or {}).get("events", []))
    names = list(dict.fromkeys([*scrapes, *restarts]))
    return OpsReport(
        deployments=tuple(
            deployment_ops(
                name,
                scrapes.get(name, ()),
                before=(before or {}).get(name, ()),
                restarts=restarts.get(name, 0),
                events=events,
                replica_names=replicas.get(name, ()),
            )
            for name in names
        ),
        events=events,
    )


# ---------------------------------------------------------------- the Grafana dashboard


def _panel(
    pid: int,
    title: str,
    exprs: Sequence[tuple[str, str]],
    unit: str,
    x: int,
    y: int,
    kind: str = "timeseries",
) -> dict[str, Any]:
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def dashboard() -> dict[str, Any]:
    """A Grafana dashboard over the pool's vLLM replicas and the router (serving/grafana/lifecycle.json)."""
    model = 'model_name=~"$model"'
    rate = "[$__rate_interval]"
    panels = [
        _panel(
            1,
            "Prompt-cache hit rate",
            [
                (
                    f"sum by (model_name) (rate({PREFIX_HITS}_total{{{model}}}{rate})) / "
                    f"sum by (model_name) (rate({PREFIX_QUERIES}_total{{{model}}}{rate}))",
                    "{{model_name}}",
                )
            ],
            "percentunit",
            0,
            0,
        ),  # fmt: skip
        _panel(
            2,
            "KV-cache use",
            [(f"max by (model_name) ({KV_USAGE}{{{model}}})", "{{model_name}}")],
            "percentunit",
            12,
            0,
        ),  # fmt: skip
        _panel(
            3,
            "Queue: requests waiting and running",
            [
                (f"sum by (model_name) ({WAITING}{{{model}}})", "{{model_name}} waiting"),
                (f"sum by (model_name) ({RUNNING}{{{model}}})", "{{model_name}} running"),
            ],
            "short",
            0,
            8,
        ),  # fmt: skip
        _panel(
            4,
            "Time to first token (vLLM)",
            [
                (
                    f"histogram_quantile({q}, sum by (le, model_name) (rate({TTFT}_bucket{{{model}}}{rate})))",
                    f"{{{{model_name}}}} p{round(q * 100)}",
                )
                for q in (0.5, 0.95)
            ],
            "s",
            12,
            8,
        ),  # fmt: skip
        _panel(
            5,
            "Tokens per second (vLLM)",
            [
                (
                    f"sum by (model_name) (rate({PROMPT_TOKENS}_total{{{model}}}{rate}))",
                    "{{model_name}} prompt",
                ),
                (
                    f"sum by (model_name) (rate({GENERATION_TOKENS}_total{{{model}}}{rate}))",
                    "{{model_name}} generated",
                ),
            ],
            "short",
            0,
            16,
        ),  # fmt: skip
        _panel(
            6,
            "Preemptions (KV-cache pressure)",
            [
                (f"sum by (model_name) (increase({PREEMPTIONS}_total{{{model}}}{rate}))", "{{model_name}}"),
            ],
            "short",
            12,
            16,
        ),  # fmt: skip
        _panel(
            7,
            "Router: requests by route and outcome",
            [
                (f"sum by (route, outcome) (rate({REQUESTS.name}{rate}))", "{{route}} {{outcome}}"),
            ],
            "reqps",
            0,
            24,
        ),  # fmt: skip
        _panel(
            8,
            "Router: time to first token",
            [
                (
                    f"histogram_quantile(0.95, sum by (le, route) (rate({TIME_TO_FIRST_TOKEN.name}_bucket{rate})))",
                    "{{route}} p95",
                ),
            ],
            "s",
            12,
            24,
        ),  # fmt: skip
        _panel(
            9,
            "Router: dollars per hour by cost class",
            [
                (f"sum by (cost_class) (rate({COST.name}{rate})) * 3600", "{{cost_class}}"),
            ],
            "currencyUSD",
            0,
            32,
        ),  # fmt: skip
        _panel(
            10,
            "Router: tokens per second by version",
            [
                (f"sum by (version, direction) (rate({TOKENS.name}{rate}))", "{{version}} {{direction}}"),
            ],
            "short",
            12,
            32,
        ),  # fmt: skip
        _panel(
            11,
            "Router: fallbacks",
            [
                (
                    f"sum by (route, backend, error_type) (increase({FALLBACKS.name}{rate}))",
                    "{{route}} {{backend}} {{error_type}}",
                ),
            ],
            "short",
            0,
            40,
        ),  # fmt: skip
    ]
    return {
        "uid": "lifecycle-serving",
        "title": "lifecycle: serving pool and router",
        "description": "vLLM replicas of `lifecycle serve` (their /metrics) and the router's metrics. "
        "Generated by lifecycle.report.ops.dashboard().",
        "tags": ["lifecycle", "vllm", "router"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
                {
                    "name": "model",
                    "type": "query",
                    "label": "Deployment",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": f"label_values({KV_USAGE}, model_name)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": panels,
    }
