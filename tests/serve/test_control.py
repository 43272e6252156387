"""A running pool as other commands reach it: the state file, status, apply over the control endpoint (with its
token, one at a time), a second pool refused, nothing left behind when it stops."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests
from pool_world import FakeLaunch, answering, artifact, ask, deployment, model_pin, pool

from lifecycle.errors import PoolBusy
from lifecycle.pool.load import parse_pool
from lifecycle.pool.schema import Pool
from lifecycle.serve.artifacts import Artifacts
from lifecycle.serve.control import ServeState, find_running, running_pool, state_path
from lifecycle.serve.run import RunningPool
from lifecycle.settings import load_settings


def dump_pool(p: Pool) -> str:
    return json.dumps(p.model_dump(mode="json"), indent=2)  # JSON is YAML


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = load_settings(env={"LIFECYCLE_HOME": str(tmp_path / "home")}, cwd=tmp_path)
    v1, v2 = artifact(tmp_path / "a", "v1"), artifact(tmp_path / "a", "v2")
    launch = FakeLaunch({str(v1[0]): answering("v1"), str(v2[0]): answering("v2")})
    pools = {n: pool(deployment(model_pin(folder, digest, n))) for n, (folder, digest) in ((1, v1), (2, v2))}
    path = tmp_path / "pool.yaml"
    path.write_text(dump_pool(pools[1]))

    def start() -> RunningPool:
        return RunningPool(
            parse_pool(path.read_text(), path),
            launch=launch,
            artifacts=Artifacts(None, settings.cache_dir),
            workdir=tmp_path / "replicas",
            state_file=state_path(settings),
        )

    running = start()
    yield settings, running, pools, path, launch, start
    running.stop()


def test_status_and_apply_through_the_state_file(served) -> None:  # type: ignore[no-untyped-def]
    settings, running, pools, path, launch, _ = served
    client = find_running(settings)
    assert client is not None and client.state.front_url == running.url
    status = client.status()
    assert [d.name for d in status.deployments] == ["tickets"]
    assert status.deployments[0].serves == "tickets v1 (W8A8)"
    assert [r.healthy for r in status.deployments[0].replicas] == [True]
    assert running_pool(settings) == pools[1]
    answer = client.apply(dump_pool(pools[2]), path, commit="abc123", pr=7)
    assert answer.ok and answer.before == pools[1] and answer.after == pools[2]
    assert ask(running.url, "tickets") == (200, "v2")
    assert client.status().applied["commit"] == "abc123"
    again = client.apply(dump_pool(pools[2]), path)
    assert again.ok and again.actions == []


def test_the_control_endpoint_wants_the_token(served) -> None:  # type: ignore[no-untyped-def]
    settings, running, *_ = served
    state = ServeState.read(state_path(settings))
    assert state is not None
    assert state_path(settings).stat().st_mode & 0o777 == 0o600
    assert requests.get(state.control_url + "/status", timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.post(state.control_url + "/apply", json={}, headers=wrong, timeout=5).status_code == 401


def test_one_pool_per_machine_and_one_apply_at_a_time(served) -> None:  # type: ignore[no-untyped-def]
    settings, running, pools, path, launch, start = served
    with pytest.raises(PoolBusy, match="a pool already runs on this machine"):
        start()
    client = find_running(settings)
    assert client is not None
    gate = threading.Event()
    real = launch.__call__

    def slow(spec, workdir):  # type: ignore[no-untyped-def]
        gate.wait(10)
        return real(spec, workdir)

    launch_calls = running.runner.launch
    running.runner.launch = slow
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(client.apply(dump_pool(pools[2]), path)))
    first.start()
    time.sleep(0.3)
    try:
        with pytest.raises(PoolBusy, match="busy"):
            client.apply(dump_pool(pools[2]), path)
    finally:
        gate.set()
        first.join(20)
        running.runner.launch = launch_calls
    assert results and results[0].ok  # type: ignore[attr-defined]


def test_stopping_leaves_nothing_running(served) -> None:  # type: ignore[no-untyped-def]
    settings, running, pools, path, launch, _ = served
    running.stop()
    assert find_running(settings) is None and not state_path(settings).exists()
    assert launch.running() == []
