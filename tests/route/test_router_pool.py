"""The router as the pool's front: the real pool runner starts fake engines (real HTTP servers speaking vLLM's
endpoints) and hands the router its live replicas through `set_routes`; requests reach them through the policy,
and a blue-green replacement changes what answers without the router restarting."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))  # the pool tests' fake launcher and pins
from pool_world import FakeLaunch, answering, artifact, deployment, make_runner, model_pin, pool  # noqa: E402

from lifecycle.route.audit import AuditLog, read_log  # noqa: E402
from lifecycle.route.load import load_policy  # noqa: E402
from lifecycle.route.policy import hash_key  # noqa: E402
from lifecycle.route.server import Router  # noqa: E402

POLICY = f"""\
tenants:
  - name: team
    keys: [{hash_key("key-team")}]
    cost_classes: [pool]
    residency: self_hosted
routes:
  - name: tickets-chat
    targets: [tickets@production]
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Any, ...]]:
    found = {name: artifact(tmp_path / "artifacts", name) for name in ("v1", "v2")}
    launch = FakeLaunch({str(folder): answering(name) for name, (folder, _) in found.items()})
    first = pool(deployment(model_pin(*found["v1"], 1), replicas=2))
    (tmp_path / "routing.yaml").write_text(POLICY)
    router = Router(
        load_policy(tmp_path / "routing.yaml", first),
        audit=AuditLog(tmp_path / "audit.jsonl", durability="flush"),
        hmac_key=b"k" * 32,
        pool=first,
        watch_every_s=None,
    ).start()
    runner = make_runner(tmp_path, launch, router)  # type: ignore[arg-type]
    try:
        yield router, runner, launch, found, tmp_path / "audit.jsonl"
    finally:
        runner.stop()
        router.stop()
        router.audit.close()


def ask(router: Router) -> httpx.Response:
    return httpx.post(
        f"{router.url}/v1/completions",
        json={"model": "tickets-chat", "prompt": "Who answers?", "max_tokens": 8},
        headers={"Authorization": "Bearer key-team"},
        timeout=10,
    )


def test_the_pool_runner_hands_the_router_its_replicas(served: tuple[Any, ...]) -> None:
    router, runner, launch, found, audit = served
    assert ask(router).status_code == 503  # nothing runs yet: refused, not sent elsewhere
    runner.reconcile(pool(deployment(model_pin(*found["v1"], 1), replicas=2)))
    assert set(router.routes) == {"tickets"} and len(router.health().replicas["tickets"]) == 2
    answers = [ask(router) for _ in range(4)]
    assert [a.json()["choices"][0]["text"].strip() for a in answers] == ["v1"] * 4
    assert all(e.counts["requests"] > 1 for e in launch.running())  # both replicas took requests
    runner.reconcile(
        pool(deployment(model_pin(*found["v2"], 2), replicas=1))
    )  # blue-green, drained through us
    assert ask(router).json()["choices"][0]["text"].strip() == "v2"
    assert router.wait_settled()
    records = [r.record for r in read_log(audit).records]
    assert [r.outcome for r in records] == ["rejected"] + ["ok"] * 5
    assert {r.model_name for r in records[1:]} == {"tickets"} and records[1].model_version == 1
