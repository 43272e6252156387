"""The pool runner with fake engines (real HTTP servers) behind the real front: every kind of change with a client
sending requests all the while (none may fail), failed rollouts reverted, dead replicas restarted."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from pool_world import (
    FakeLaunch,
    Traffic,
    adapter_pin,
    answering,
    artifact,
    ask,
    deployment,
    make_runner,
    model_pin,
    pool,
)

from lifecycle.errors import RolloutFailed
from lifecycle.pool.schema import BaseWeights, Pool
from lifecycle.serve.front import Front


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Artifacts v1 and v2 of a model, a base, adapters a1 and a2 for that base; a front and a runner."""
    root = tmp_path / "artifacts"
    found = {}
    for name, adapter in (("v1", False), ("v2", False), ("base", False), ("a1", True), ("a2", True)):
        found[name] = artifact(root, name, adapter=adapter)
    launch = FakeLaunch({str(folder): answering(name) for name, (folder, _) in found.items()})
    front = Front()
    runner = make_runner(tmp_path, launch, front)
    yield found, launch, front, runner
    runner.stop()
    front.stop()


def _v(found, name, version, scheme="W8A8"):  # type: ignore[no-untyped-def]
    folder, digest = found[name]
    return model_pin(folder, digest, version, scheme)


def _base(found):  # type: ignore[no-untyped-def]
    folder, digest = found["base"]
    return BaseWeights(kind="base", source=str(folder), manifest_digest=digest)


def _adapter(found, name, version):  # type: ignore[no-untyped-def]
    folder, digest = found[name]
    return adapter_pin(folder, digest, version, found["base"][1])


def test_start_serves_every_replica_through_one_endpoint(world) -> None:  # type: ignore[no-untyped-def]
    found, launch, front, runner = world
    done = runner.reconcile(pool(deployment(_v(found, "v1", 1), replicas=2)))
    assert len(launch.running()) == 2
    assert [ask(front.url, "tickets") for _ in range(4)] == [(200, "v1")] * 4
    assert {e.counts["requests"] > 1 for e in launch.running()} == {True}  # both replicas took requests
    assert done.before == Pool() and done.after == runner.pool
    assert ask(front.url, "nobody")[0] == 404
    again = runner.reconcile(pool(deployment(_v(found, "v1", 1), replicas=2)))
    assert again.actions == () and len(launch.started) == 2  # applying twice changes nothing


def test_quantization_change_is_blue_green_and_loses_no_request(world) -> None:  # type: ignore[no-untyped-def]
    found, launch, front, runner = world
    runner.reconcile(pool(deployment(_v(found, "v1", 1))))
    old = launch.running()
    with Traffic(front.url, "tickets") as traffic:
        runner.reconcile(pool(deployment(_v(found, "v2", 2, scheme="FP8_DYNAMIC"))))
    assert traffic.failures == []
    assert traffic.answers[0] == "v1" and traffic.answers[-1] == "v2"
    assert set(traffic.answers) == {"v1", "v2"}
    switched = traffic.answers.index("v2")
    assert "v1" not in traffic.answers[switched:]  # one swap, never back
    assert not any(e.running() for e in old)  # the old servers were stopped


def test_adapter_versions_are_hot_loaded_without_a_restart(world) -> None:  # type: ignore[no-untyped-def]
    found, launch, front, runner = world
    runner.reconcile(pool(deployment(_base(found), replicas=2, adapters=(_adapter(found, "a1", 1),))))
    assert ask(front.url, "tickets-lora") == (200, "a1")
    with Traffic(front.url, "tickets-lora") as traffic:
        done = runner.reconcile(
            pool(deployment(_base(found), replicas=2, adapters=(_adapter(found, "a2", 2),)))
        )
    assert traffic.failures == [] and traffic.answers[-1] == "a2"
    assert len(launch.started) == 2  # no new server
    assert done.actions[0].startswith("hot-load adapter tickets-lora (tickets-lora v2) in place of v1")
    # a replica that restarts comes back with the adapter it serves now
    assert {str(r.spec.lora_modules["tickets-lora"]) for r in runner.replicas["tickets"]} == {
        str(found["a2"][0])
    }
    runner.reconcile(pool(deployment(_base(found), replicas=2)))
    assert ask(front.url, "tickets-lora")[0] == 404
    assert ask(front.url, "tickets") == (200, "base")


def test_a_new_version_that_fails_its_checks_is_reverted(world) -> None:  # type: ignore[no-untyped-def]
    found, launch, front, runner = world
    first = pool(deployment(_v(found, "v1", 1)))
    runner.reconcile(first)
    launch.failing.add(str(found["v2"][0]))
    with Traffic(front.url, "tickets") as traffic, pytest.raises(RolloutFailed, match="Reverted"):
        runner.reconcile(pool(deployment(_v(found, "v2", 2))))
    assert traffic.failures == [] and set(traffic.answers) == {"v1"}
    assert runner.pool == first


def test_changed_bytes_or_a_vanished_artifact_never_serve(world) -> None:  # type: ignore[no-untyped-def]
    found, launch, front, runner = world
    runner.reconcile(pool(deployment(_v(found, "v1", 1))))
    weights = found["v2"][0] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[10] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(RolloutFailed, match="does not match its manifest"):
        runner.reconcile(pool(deployment(_v(found, "v2", 2))))
    shutil.rmtree(found["v2"][0])
    with pytest.raises(RolloutFailed, match="is gone"):
        runner.reconcile(pool(deployment(_v(found, "v2", 2))))
    assert ask(front.url, "tickets") == (200, "v1") and len(launch.started) == 1


def test_a_failure_midway_reverts_what_the_apply_had_done(world) -> None:  # type: ignore[no-untyped-def]
    found, launch, front, runner = world
    runner.reconcile(pool(deployment(_v(found, "v1", 1))))
    other = deployment(_v(found, "v2", 2)).model_copy(update={"name": "other"})
    launch.failing.add(str(found["v2"][0]))
    # scale tickets up to 2 (done first: capacity before anything else), then start `other` (fails)
    with pytest.raises(RolloutFailed):
        runner.reconcile(pool(deployment(_v(found, "v1", 1), replicas=2), other))
    assert runner.pool == pool(deployment(_v(found, "v1", 1)))
    assert len(launch.running()) == 1


def test_scale_down_drains_before_it_stops(world) -> None:  # type: ignore[no-untyped-def]
    found, launch, front, runner = world
    runner.reconcile(pool(deployment(_v(found, "v1", 1), replicas=3)))
    with Traffic(front.url, "tickets") as traffic:
        runner.reconcile(pool(deployment(_v(found, "v1", 1), replicas=1)))
    assert traffic.failures == []
    assert len(launch.running()) == 1 and len(front.routes["tickets"]) == 1


def test_a_dead_replica_is_restarted_and_reported(world) -> None:  # type: ignore[no-untyped-def]
    found, launch, front, runner = world
    runner.reconcile(pool(deployment(_v(found, "v1", 1), replicas=2)))
    runner.replicas["tickets"][0].server.stop()
    with Traffic(front.url, "tickets") as traffic:
        lines = runner.supervise()
    assert lines == ["tickets/0 died; restarting it", "tickets/0 restarted (restart 1)"]
    assert traffic.failures == []  # requests in the meantime went to the other replica, or were retried
    assert len(launch.running()) == 2 and runner.replicas["tickets"][0].restarts == 1
    assert runner.supervise() == []
    assert any("tickets/0 restarted" in e for e in runner.events)


def test_a_pools_servers_start_side_by_side_all_or_none(world) -> None:  # type: ignore[no-untyped-def]
    found, launch, front, runner = world
    together = threading.Barrier(3, timeout=20)

    def launch_together(spec, workdir):  # type: ignore[no-untyped-def]
        together.wait()  # broken unless all three starts are under way at once
        return launch(spec, workdir)

    runner.launch = launch_together
    base = deployment(_base(found)).model_copy(update={"name": "base"})
    runner.reconcile(pool(deployment(_v(found, "v1", 1), replicas=2), base))
    assert len(launch.running()) == 3
    assert ask(front.url, "tickets") == (200, "v1") and ask(front.url, "base") == (200, "base")

    # one deployment of a first start fails: the others' servers are stopped again, nothing is routed
    runner.stop()
    launch.failing.add(str(found["v2"][0]))
    runner.launch = launch
    bad = deployment(_v(found, "v2", 2)).model_copy(update={"name": "other"})
    with pytest.raises(RolloutFailed, match="did not start"):
        runner.reconcile(pool(deployment(_v(found, "v1", 1), replicas=2), bad))
    assert launch.running() == [] and runner.pool == Pool()
    assert ask(front.url, "tickets")[0] == 404
