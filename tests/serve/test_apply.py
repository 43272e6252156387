"""`apply` on a running pool with a real MLflow store: aliases move only after the pool serves the change, never
when the rollout failed or someone moved them by hand; one apply at a time; applying twice changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pool_world import QUESTION, FakeLaunch, answering, artifact, ask, deployment, pool
from registered_world import register_version

from lifecycle.errors import AliasConflict, PoolBusy, RolloutFailed
from lifecycle.pool import pins
from lifecycle.pool.load import parse_pool
from lifecycle.pool.schema import Pool
from lifecycle.registry.models import Registry
from lifecycle.registry.tracking import Tracker
from lifecycle.serve.apply import aliases_at_start, apply_local, apply_lock
from lifecycle.serve.artifacts import Artifacts
from lifecycle.serve.control import find_running, state_path
from lifecycle.serve.run import RunningPool
from lifecycle.settings import load_settings


def write(path: Path, p: Pool) -> None:
    path.write_text(json.dumps(p.model_dump(mode="json"), indent=2))  # JSON is YAML


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = load_settings(env={"LIFECYCLE_HOME": str(tmp_path / "home")}, cwd=tmp_path)
    registry = Registry(Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "store"))
    pools, models = {}, {}
    for n in (1, 2, 3):
        folder, _ = artifact(tmp_path / "a", f"v{n}")
        record = register_version(registry, "tickets", folder, "b" * 64, scheme="W8A8")
        stored = Path(record.source.removeprefix("file://"))
        models[str(stored)] = answering(f"v{n}")
        pools[n] = pool(deployment(pins.model_pin(record)).model_copy(update={"name": "tickets"}))
    launch = FakeLaunch(models)
    path = tmp_path / "pool.yaml"
    write(path, pools[1])
    running = RunningPool(
        parse_pool(path.read_text(), path),
        launch=launch,
        artifacts=Artifacts(None, settings.cache_dir),
        workdir=tmp_path / "replicas",
        state_file=state_path(settings),
    )
    client = find_running(settings)
    assert client is not None
    assert aliases_at_start(registry, pools[1], commit="0" * 40) == [
        f"tickets: production nothing (unset) -> v1 (deployed by {'0' * 12})"
    ]

    def apply(p: Pool, **kwargs):  # type: ignore[no-untyped-def]
        write(path, p)
        return apply_local(
            parse_pool(path.read_text(), path),
            client,
            registry,
            commit=kwargs.get("commit"),
            pr=kwargs.get("pr"),
            lock_dir=state_path(settings).parent,
        )

    yield registry, running, pools, launch, apply, settings
    running.stop()


def test_the_aliases_follow_the_pool_after_it_changed(world) -> None:  # type: ignore[no-untyped-def]
    registry, running, pools, launch, apply, _ = world
    done = apply(pools[2], commit="c0ffee", pr=12)
    assert ask(running.url, "tickets") == (200, "v2")
    assert registry.aliases("tickets") == {"production": "2", "previous": "1", "candidate": "3"}
    assert done.aliases == ("tickets: previous := v1, production v1 -> v2 (deployed by c0ffee, PR #12)",)
    tags = registry.get("tickets", "2").tags
    assert (tags["lifecycle.deployed.commit"], tags["lifecycle.deployed.pr"]) == ("c0ffee", "12")
    again = apply(pools[2])
    assert again.actions == () and again.aliases == ()
    apply(pools[1], commit="bad1dea")
    assert registry.aliases("tickets")["production"] == "1"
    assert registry.aliases("tickets")["previous"] == "2"


def test_a_failed_rollout_moves_no_alias(world) -> None:  # type: ignore[no-untyped-def]
    registry, running, pools, launch, apply, _ = world
    launch.failing = {k for k, m in launch.models.items() if m.answers[QUESTION] == " v2"}
    with pytest.raises(RolloutFailed, match="Reverted"):
        apply(pools[2])
    assert ask(running.url, "tickets") == (200, "v1")
    assert registry.aliases("tickets")["production"] == "1"


def test_an_alias_moved_by_hand_stops_the_apply_before_anything_changes(world) -> None:  # type: ignore[no-untyped-def]
    registry, running, pools, launch, apply, _ = world
    apply(pools[2])
    registry.set_alias("tickets", "production", "3")  # someone, by hand
    with pytest.raises(AliasConflict, match="moved outside the pool file"):
        apply(pools[1])
    assert ask(running.url, "tickets") == (200, "v2")  # the pool was not touched
    assert registry.aliases("tickets")["production"] == "3"  # nor the alias


def test_one_apply_at_a_time(world) -> None:  # type: ignore[no-untyped-def]
    registry, running, pools, launch, apply, settings = world
    with apply_lock(state_path(settings).parent), pytest.raises(PoolBusy, match="another apply is running"):
        apply(pools[2])
    assert ask(running.url, "tickets") == (200, "v1")
