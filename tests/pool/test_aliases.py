"""Aliases as outputs of the pool file: the plan (pure, every pair of states of one model, then random sequences
of pools checked against the drift rules) and the compare-and-set against a real MLflow sqlite store."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from pathlib import Path

import pytest

from lifecycle import manifest
from lifecycle.errors import AliasConflict
from lifecycle.pool.aliases import (
    DEPLOYED_AT,
    DEPLOYED_COMMIT,
    DEPLOYED_PR,
    AliasMove,
    alias_plan,
    move_aliases,
    pinned_versions,
)
from lifecycle.pool.drift import registry_drift
from lifecycle.pool.schema import Adapter, BaseWeights, Deployment, Pool, RegisteredModel
from lifecycle.registry.models import Registry
from lifecycle.registry.tracking import Tracker

BASE_DIGEST = "b" * 64


def sha(tag: str) -> str:
    return (tag * 64)[:64]


def model(version: int, name: str = "support") -> RegisteredModel:
    return RegisteredModel.model_validate(
        {
            "name": name,
            "version": version,
            "artifact": f"file:///store/{name}/{version}/served-model",
            "manifest_digest": sha(f"{version:x}"),
            "quantization": {"scheme": "W8A8", "config_sha256": sha("c")},
            "recipe_sha256": sha("e"),
            "base_model": "/models/tiny",
        }
    )


def adapter(version: int, name: str = "tickets") -> Adapter:
    return Adapter(
        name=name,
        model=f"{name}-lora",
        version=version,
        artifact=f"file:///store/{name}/{version}",
        manifest_digest=sha(f"{version + 5:x}"),
        base_manifest_digest=BASE_DIGEST,
        recipe_sha256=sha("f"),
    )


def dep(name: str, served: RegisteredModel | BaseWeights, *adapters: Adapter) -> Deployment:
    return Deployment(
        name=name,
        model=served,
        adapters=list(adapters),
        residency="self_hosted",
        price_per_gpu_hour=0.0,
    )


BASE = BaseWeights(kind="base", source="/models/tiny", manifest_digest=BASE_DIGEST)


def pool(*deployments: Deployment) -> Pool:
    return Pool(deployments=list(deployments))


# ------------------------------------------------------------------------------------------------ the plan


def test_first_pin_sets_production_only() -> None:
    (move,) = alias_plan(pool(), pool(dep("a", model(1))))
    assert move == AliasMove("support", before=(), after=(1,), production=1)
    assert move.previous is None and move.expected == {None}
    assert move.describe() == "support: production := v1"


def test_a_new_version_moves_previous_and_production() -> None:
    (move,) = alias_plan(pool(dep("a", model(1))), pool(dep("a", model(2))))
    assert (move.production, move.previous, move.expected) == (2, 1, {1})
    assert move.describe() == "support: previous := v1, production := v2"


def test_nothing_moves_when_the_versions_are_the_same() -> None:
    before = pool(dep("a", model(1)), dep("b", BASE, adapter(3)))
    moved = pool(dep("renamed", model(1)), dep("b", BASE.model_copy(update={"source": "/x"}), adapter(3)))
    assert alias_plan(before, moved) == []  # deployments and other fields may change: the versions did not
    assert alias_plan(before, before) == []


def test_a_model_no_longer_pinned_loses_production() -> None:
    (move,) = alias_plan(pool(dep("a", model(1))), pool())
    assert (move.production, move.previous, move.expected, move.hold) == (None, 1, {1}, None)
    assert "no longer pinned: remove production (v1), previous := it" in move.describe()


def test_adapters_are_registered_models_and_base_weights_are_not() -> None:
    plan = alias_plan(
        pool(dep("tiny", BASE, adapter(1))), pool(dep("tiny", BASE, adapter(2), adapter(1, "faq")))
    )
    assert [(m.model, m.before, m.production) for m in plan] == [
        ("faq-lora", (), 1),
        ("tickets-lora", (1,), 2),
    ]


def test_a_model_pinned_at_two_versions_is_held() -> None:
    before = pool(dep("a", model(1)))
    after = pool(dep("a", model(1)), dep("canary", model(2)))
    (move,) = alias_plan(before, after)
    assert move.hold is not None and move.production is None
    assert "pinned at 2 versions at once (v1 (a), v2 (canary))" in move.hold
    assert move.describe().startswith("support: no single production version: pinned at 2 versions")
    # the canary ends: production may be any of the versions it was held at (or unset, if never set)
    (back,) = alias_plan(after, pool(dep("a", model(2))))
    assert (back.production, back.previous, back.expected) == (2, None, {None, 1, 2})


def test_plans_are_sorted_by_model() -> None:
    after = pool(dep("z", model(1, "zeta")), dep("a", model(1, "alpha")), dep("m", BASE, adapter(1, "mid")))
    assert [m.model for m in alias_plan(pool(), after)] == ["alpha", "mid-lora", "zeta"]


# One model's states: not pinned, v1 on a, v2 on a, v1 on a and b, v1 on a + v2 on b, v2 as an adapter of b
STATES = {
    "none": pool(),
    "v1@a": pool(dep("a", model(1))),
    "v2@a": pool(dep("a", model(2))),
    "v1@a,b": pool(dep("a", model(1)), dep("b", model(1))),
    "v1@a+v2@b": pool(dep("a", model(1)), dep("b", model(2))),
    "v3@b+v1@a": pool(dep("a", model(1)), dep("b", model(3))),
}


def production_after(pinned: set[int], held_at: int | None) -> int | None:
    """What production names after an apply to a pool pinning `pinned`: the version, if one; else unchanged."""
    if len(pinned) == 1:
        return next(iter(pinned))
    return held_at if pinned else None


@pytest.mark.parametrize(("a", "b"), list(itertools.product(STATES, STATES)))
def test_every_pair_of_states(a: str, b: str) -> None:
    before, after = STATES[a], STATES[b]
    was = set(pinned_versions(before).get("support", {}))
    now = set(pinned_versions(after).get("support", {}))
    plan = alias_plan(before, after)
    if was == now:
        assert plan == []
        return
    (move,) = plan
    assert (set(move.before), set(move.after)) == (was, now)
    assert (move.hold is not None) == (len(now) > 1)
    if move.hold is None:
        assert move.production == (min(now) if now else None)
    # whatever production names after applying `before` (from any history) is what this move expects
    for held_at in [None, *sorted(was)] if len(was) > 1 else [production_after(was, None)]:
        assert held_at in move.expected
    # previous := the version that served alone before, unless it stays production (kept by a hold)
    stays = len(was) == 1 and (min(was) in now if len(now) > 1 else min(was) == move.production)
    assert move.previous == (min(was) if len(was) == 1 and not stays else None)


# ------------------------------------------------------------------------------------------------ the registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A real MLflow sqlite store with support v1-v3 and tickets-lora v1-v2 (each a tiny folder with a
    manifest)."""
    root = tmp_path_factory.mktemp("aliases-store")
    reg = Registry(Tracker(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"))
    for name in ("support", "tickets-lora", "held", "removed", "handmoved", "partial", "alpha", "beta"):
        for version in (1, 2, 3):
            folder = root / f"{name}-{version}"
            folder.mkdir()
            (folder / "weights.bin").write_bytes(bytes([version]) * 64)
            manifest.write(folder)
            run = reg.tracker.start_run("alias-tests", f"{name}-{version}", {})
            reg.register(name, run, folder, {"lifecycle.gate": "passed"}, "", "candidate")
    return reg


NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_move_sets_previous_then_production_tags_and_is_idempotent(registry: Registry) -> None:
    first = alias_plan(pool(), pool(dep("a", model(1))))
    lines = move_aliases(registry, first, commit="a" * 40, pr=7, now=NOW)
    assert lines == [f"support: production nothing (unset) -> v1 (deployed by {'a' * 12}, PR #7)"]
    assert registry.aliases("support") == {"candidate": "3", "production": "1"}

    second = alias_plan(pool(dep("a", model(1))), pool(dep("a", model(2))))
    lines = move_aliases(registry, second, commit="b" * 40, pr=8, now=NOW)
    assert lines == [f"support: previous := v1, production v1 -> v2 (deployed by {'b' * 12}, PR #8)"]
    assert registry.aliases("support") == {"candidate": "3", "previous": "1", "production": "2"}
    tags = registry.get("support", "2").tags
    assert (tags[DEPLOYED_COMMIT], tags[DEPLOYED_PR], tags[DEPLOYED_AT]) == (
        "b" * 40,
        "8",
        "2025-03-01T12:00:00+00:00",
    )
    assert DEPLOYED_COMMIT not in registry.get("support", "3").tags

    # the apply runs again (it stopped after moving the aliases, or it was retried): nothing moves, tags are kept
    again = move_aliases(registry, second, commit="b" * 40, pr=8, now=NOW + dt.timedelta(hours=1))
    assert again == ["support: production already v2"]
    assert registry.aliases("support") == {"candidate": "3", "previous": "1", "production": "2"}
    assert registry.get("support", "2").tags[DEPLOYED_AT] == "2025-03-01T12:00:00+00:00"  # when it moved

    # a later deploy of v1 without a pull request (a revert pushed straight to main) drops v1's stale PR tag
    assert registry.get("support", "1").tags[DEPLOYED_PR] == "7"  # from its first deploy
    back = alias_plan(pool(dep("a", model(2))), pool(dep("a", model(1))))
    assert move_aliases(registry, back, commit="d" * 40, pr=None, now=NOW) == [
        f"support: previous := v2, production v2 -> v1 (deployed by {'d' * 12})"
    ]
    tags = registry.get("support", "1").tags
    assert tags[DEPLOYED_COMMIT] == "d" * 40 and DEPLOYED_PR not in tags


def test_production_moved_by_hand_is_drift_and_is_not_overwritten(registry: Registry) -> None:
    move_aliases(registry, alias_plan(pool(), pool(dep("a", model(1, "handmoved")))), commit=None, pr=None)
    registry.set_alias("handmoved", "production", "3")  # someone, in the MLflow UI
    plan = alias_plan(pool(dep("a", model(1, "handmoved"))), pool(dep("a", model(2, "handmoved"))))
    with pytest.raises(AliasConflict) as caught:
        move_aliases(registry, plan, commit="e" * 40, pr=9)
    message = str(caught.value)
    assert message.startswith("handmoved: production names v3, expected v1 (the pool file pinned v1 before")
    assert "or v2 (this change, already made)" in message and "Nothing was overwritten" in message
    assert registry.aliases("handmoved") == {"candidate": "3", "production": "3"}
    assert DEPLOYED_COMMIT not in registry.get("handmoved", "2").tags

    # production removed by hand is drift too
    registry.delete_alias("handmoved", "production")
    with pytest.raises(AliasConflict, match="handmoved: production names nothing .unset., expected v1"):
        move_aliases(registry, plan, commit="e" * 40, pr=9)


def test_a_conflict_stops_before_the_models_after_it(registry: Registry) -> None:
    registry.set_alias("partial", "production", "3")  # the pool never pinned it: production must be unset
    plan = alias_plan(pool(), pool(dep("a", model(1, "partial")), dep("b", model(1))))
    assert [m.model for m in plan] == ["partial", "support"]
    with pytest.raises(AliasConflict, match="partial: production names v3, expected nothing .unset."):
        move_aliases(registry, plan, commit=None, pr=None)


def test_removal_and_hold(registry: Registry) -> None:
    move_aliases(registry, alias_plan(pool(), pool(dep("a", model(2, "removed")))), commit=None, pr=None)
    gone = alias_plan(pool(dep("a", model(2, "removed"))), pool())
    assert move_aliases(registry, gone, commit="f" * 40, pr=1) == [
        "removed: previous := v2, production v2 -> nothing (unset)"
    ]
    assert registry.aliases("removed") == {"candidate": "3", "previous": "2"}
    assert move_aliases(registry, gone, commit="f" * 40, pr=1) == ["removed: production already removed"]

    move_aliases(registry, alias_plan(pool(), pool(dep("a", model(1, "held")))), commit=None, pr=None)
    canary = alias_plan(
        pool(dep("a", model(1, "held"))), pool(dep("a", model(1, "held")), dep("c", model(2, "held")))
    )
    (line,) = move_aliases(registry, canary, commit="f" * 40, pr=2)
    assert line.startswith("held: production kept at v1 (pinned at 2 versions at once (v1 (a), v2 (c))")
    assert registry.aliases("held") == {"candidate": "3", "production": "1"}
    assert DEPLOYED_COMMIT not in registry.get("held", "2").tags
    assert move_aliases(registry, canary, commit="f" * 40, pr=2) == [line]  # again: the same

    # a canary pair that no longer includes production: it would name a version nothing serves, so it goes
    pair = pool(dep("a", model(2, "held")), dep("c", model(3, "held")))
    moved = alias_plan(pool(dep("a", model(1, "held"))), pair)
    (line,) = move_aliases(registry, moved, commit=None, pr=None)
    assert line.startswith("held: previous := v1, production v1 -> nothing (unset) (pinned at 2 versions")
    assert registry.aliases("held") == {"candidate": "3", "previous": "1"}
    assert move_aliases(registry, moved, commit=None, pr=None)[0].startswith("held: production stays unset (")
    (line,) = move_aliases(registry, alias_plan(pair, pool(dep("a", model(3, "held")))), commit=None, pr=None)
    assert line == "held: production nothing (unset) -> v3 (deployed by no commit)"
    assert registry.aliases("held") == {"candidate": "3", "previous": "1", "production": "3"}


def test_an_apply_that_stopped_between_the_two_aliases_finishes(registry: Registry) -> None:
    move_aliases(registry, alias_plan(pool(), pool(dep("t", BASE, adapter(1)))), commit=None, pr=None)
    registry.set_alias("tickets-lora", "previous", "1")  # the first of the two calls happened, then a crash
    plan = alias_plan(pool(dep("t", BASE, adapter(1))), pool(dep("t", BASE, adapter(2))))
    move_aliases(registry, plan, commit="1" * 40, pr=3)
    assert registry.aliases("tickets-lora") == {"candidate": "3", "previous": "1", "production": "2"}
    assert registry.get("tickets-lora", "2").tags[DEPLOYED_PR] == "3"


def test_registry_reads(registry: Registry, tmp_path: Path) -> None:
    assert registry.find("support", "99") is None and registry.find("no-such", "1") is None
    found = registry.find("support", "2")
    assert found is not None and found.version == "2"
    assert registry.aliases("no-such") == {}
    every = registry.all_aliases()
    assert every["support"]["candidate"] == "3" and set(every) >= {"support", "tickets-lora"}
    fetched = registry.download_version(found, tmp_path / "fetched")
    assert (
        fetched.name == "served-model"
        and manifest.verify(fetched).digest
        == manifest.verify(Path(found.source.removeprefix("file://"))).digest
    )


def test_random_sequences_of_applies_never_conflict_and_leave_no_drift(registry: Registry) -> None:
    """Pools drawn at random, applied in sequence through the real store: the compare-and-set never refuses an
    apply's own history, and afterwards the registry agrees with the pool file by the drift rules."""
    rng = random.Random(7)
    names = ["alpha", "beta"]
    seen: set[str] = set()
    for _sequence in range(15):
        for name in [*names, "tickets-lora"]:
            registry.delete_alias(name, "production")
            registry.delete_alias(name, "previous")
        current = pool()
        for _step in range(5):
            deployments = [
                dep(f"d{i}", model(rng.randint(1, 3), rng.choice(names))) for i in range(rng.randint(0, 3))
            ]
            if rng.random() < 0.5:
                adapters = [adapter(rng.randint(1, 3))] if rng.random() < 0.7 else []
                deployments.append(dep("tiny", BASE, *adapters))
            desired = pool(*deployments)
            plan = alias_plan(current, desired)
            for line in move_aliases(registry, plan, commit=None, pr=None):
                seen.update(k for k in ("kept at", "-> nothing", "previous :=", "stays unset") if k in line)
            aliases = {m: a for m, a in registry.all_aliases().items() if m in [*names, "tickets-lora"]}
            assert registry_drift(desired, aliases) == [], (current, desired)
            current = desired
    assert seen == {"kept at", "-> nothing", "previous :=", "stays unset"}  # every kind of move was made
