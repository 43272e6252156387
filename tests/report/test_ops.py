"""The operations view over /metrics text exposed the way vLLM exposes it (prometheus_client, vLLM's metric names
and labels), the pool's restarts and events; the Grafana dashboard file is the one the code generates, and every
vLLM metric it names exists in the installed vLLM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lifecycle.report.ops import dashboard, ops_report, parse_prometheus, quantile

ROOT = Path(__file__).parents[2]
VLLM_LOGGERS = ROOT / ".venv-serve/lib/python3.11/site-packages/vllm/v1/metrics/loggers.py"
LABELS = ["model_name", "engine"]
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)


def scrape(model: str, *, hits: float, queries: float, kv: float, waiting: int, ttfts: list[float]) -> str:
    """One replica's /metrics as vLLM writes it (same names, labels, counter suffixes)."""
    registry = CollectorRegistry()
    labels = {"model_name": model, "engine": "0"}
    Counter("vllm:prefix_cache_queries", "q", LABELS, registry=registry).labels(**labels).inc(queries)
    Counter("vllm:prefix_cache_hits", "h", LABELS, registry=registry).labels(**labels).inc(hits)
    Gauge("vllm:kv_cache_usage_perc", "kv", LABELS, registry=registry).labels(**labels).set(kv)
    Gauge("vllm:num_requests_waiting", "w", LABELS, registry=registry).labels(**labels).set(waiting)
    Gauge("vllm:num_requests_running", "r", LABELS, registry=registry).labels(**labels).set(2)
    ttft = Histogram("vllm:time_to_first_token_seconds", "t", LABELS, buckets=TTFT_BUCKETS, registry=registry)
    for value in ttfts:
        ttft.labels(**labels).observe(value)
    Counter("vllm:prompt_tokens", "p", LABELS, registry=registry).labels(**labels).inc(1000)
    Counter("vllm:generation_tokens", "g", LABELS, registry=registry).labels(**labels).inc(250)
    return generate_latest(registry).decode()


STATUS = {
    "deployments": [
        {
            "name": "chat-a",
            "replicas": [{"name": "chat-a/0", "restarts": 1}, {"name": "chat-a/1", "restarts": 0}],
        },
        {"name": "chat-b", "replicas": [{"name": "chat-b/0", "restarts": 2}]},
    ],
    "events": [
        "2026-03-01T10:00:00 chat-a/0 died; restarting it",
        "2026-03-01T10:00:05 chat-a/0 restarted (restart 1)",
        "2026-03-01T11:00:00 chat-b/0 died; restarting it",
        "2026-03-01T11:00:01 chat-b/0 did not come back (vLLM: CUDA out of memory); trying again",
        "2026-03-01T11:00:30 chat-b/0 restarted (restart 2)",
    ],
}


def test_the_view_from_two_replicas_and_the_pool_status() -> None:
    scrapes = {
        "chat-a": [
            scrape("chat-a", hits=300, queries=1000, kv=0.25, waiting=1, ttfts=[0.03] * 8 + [0.3] * 2),
            scrape("chat-a", hits=100, queries=1000, kv=0.75, waiting=3, ttfts=[0.05] * 10),
        ]
    }
    report = ops_report(scrapes, STATUS)
    a, b = report.deployments
    assert (a.name, a.replicas, b.name, b.replicas) == ("chat-a", 2, "chat-b", 0)
    assert a.prefix_cache_hit_rate == pytest.approx(0.2)  # (300 + 100) / (1000 + 1000) tokens
    assert a.kv_cache_usage == 0.75  # the fullest replica
    assert (a.waiting, a.running) == (4, 4)
    # 20 first tokens: 8 in (0.02, 0.04], 10 in (0.04, 0.06], 2 in (0.25, 0.5]; the median, rank 10, is 2/10 of
    # the way into (0.04, 0.06]: 0.044; p95, rank 19, halfway into (0.25, 0.5]: 0.375
    assert a.ttft_p50_s == pytest.approx(0.044)
    assert a.ttft_p95_s == pytest.approx(0.375)
    assert a.ttft_mean_s == pytest.approx((8 * 0.03 + 2 * 0.3 + 10 * 0.05) / 20)
    assert (a.prompt_tokens, a.generation_tokens) == (2000, 500)
    assert (a.restarts, a.deaths, a.oom_kills) == (1, 1, 0)
    assert (b.restarts, b.deaths, b.oom_kills) == (2, 1, 1)
    assert b.prefix_cache_hit_rate is None and b.ttft_p50_s is None


def test_rates_between_two_scrapes() -> None:
    before = {"chat-a": [scrape("chat-a", hits=100, queries=500, kv=0.1, waiting=0, ttfts=[0.03] * 10)]}
    now = {
        "chat-a": [
            scrape("chat-a", hits=400, queries=1000, kv=0.2, waiting=0, ttfts=[0.03] * 10 + [0.3] * 10)
        ]
    }
    [a] = ops_report(now, before=before).deployments
    assert a.prefix_cache_hit_rate == pytest.approx(300 / 500)
    assert a.ttft_p50_s == pytest.approx(0.375)  # only the 10 new ones, all in (0.25, 0.5]


def test_parsing_and_quantiles() -> None:
    text = '# HELP x\nvllm:a_total{model_name="m \\"q\\"",engine="0"} 3.0\nbad line\nvllm:b 1e3 1700000000\n'
    samples = parse_prometheus(text)
    assert [(s.name, dict(s.labels), s.value) for s in samples] == [
        ("vllm:a_total", {"model_name": 'm "q"', "engine": "0"}, 3.0),
        ("vllm:b", {}, 1000.0),
    ]
    assert quantile({1.0: 0, float("inf"): 0}, 0.5) is None
    assert quantile({1.0: 5, 2.0: 5, float("inf"): 10}, 0.9) == 2.0  # in +Inf: the highest finite bound


def test_the_dashboard_file_is_the_generated_one_and_names_real_metrics() -> None:
    shipped = json.loads((ROOT / "serving/grafana/lifecycle.json").read_text())
    assert shipped == dashboard()
    exprs = [t["expr"] for p in shipped["panels"] for t in p["targets"]]
    names = {m for e in exprs for m in re.findall(r"vllm:[a-z_:]+", e)}
    assert {"vllm:prefix_cache_hits_total", "vllm:kv_cache_usage_perc", "vllm:num_requests_waiting"} <= names
    if VLLM_LOGGERS.exists():  # the serving environment's own definitions
        defined = set(re.findall(r'name="(vllm:[a-z_]+)"', VLLM_LOGGERS.read_text()))
        for name in names:
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert base in defined, name
    assert any("lifecycle_router_requests_total" in e for e in exprs)
    assert len({p["id"] for p in shipped["panels"]}) == len(shipped["panels"])
