"""The reconcile diff: table-driven cases, then every pair of states of one deployment, then random pools of
several: applying the plan to the current pool gives the desired one, and planning again finds nothing."""

from __future__ import annotations

import itertools
import random

import pytest

from lifecycle.pool import diff as d
from lifecycle.pool.schema import Adapter, BaseWeights, Deployment, Engine, Pool, RegisteredModel, VllmArgs

BASE_DIGEST = "b" * 64


def sha(tag: str) -> str:
    return (tag * 64)[:64]


def model(version: int, scheme: str = "W8A8") -> RegisteredModel:
    return RegisteredModel.model_validate(
        {
            "name": "support",
            "version": version,
            "artifact": f"file:///store/{version}/served-model",
            "manifest_digest": sha(f"{version:x}"),
            "quantization": {"scheme": scheme, "config_sha256": sha("c" if scheme == "W8A8" else "d")},
            "recipe_sha256": sha("e"),
            "base_model": "/models/tiny",
        }
    )


BASE = BaseWeights(kind="base", source="/models/tiny", manifest_digest=BASE_DIGEST)


def adapter(name: str, version: int) -> Adapter:
    return Adapter(
        name=name,
        model=f"{name}-lora",
        version=version,
        artifact=f"file:///store/{name}/{version}",
        manifest_digest=sha(f"{version + 5:x}"),
        base_manifest_digest=BASE_DIGEST,
        recipe_sha256=sha("f"),
    )


def dep(name: str = "a", **changes: object) -> Deployment:
    values: dict[str, object] = {
        "name": name,
        "model": model(1),
        "replicas": 1,
        "residency": "self_hosted",
        "price_per_gpu_hour": 0.0,
    }
    values.update(changes)
    return Deployment.model_validate(values)


def pool(*deployments: Deployment) -> Pool:
    return Pool(deployments=list(deployments))


def kinds(actions: tuple[d.Action, ...]) -> list[str]:
    return [type(a).__name__ for a in actions]


CASES = [
    ("nothing to nothing", pool(), pool(), []),
    ("same pool", pool(dep()), pool(dep()), []),
    ("new deployment", pool(), pool(dep()), ["Start"]),
    ("removed deployment", pool(dep()), pool(), ["Stop"]),
    ("new version", pool(dep()), pool(dep(model=model(2))), ["Replace"]),
    ("new quantization", pool(dep()), pool(dep(model=model(1, "FP8_DYNAMIC"))), ["Replace"]),
    (
        "engine args",
        pool(dep()),
        pool(dep(engine=Engine(args=VllmArgs(tool_call_parser="hermes")))),
        ["Replace"],
    ),
    ("moved to rented GPUs", pool(dep()), pool(dep(residency="rented", region="eu-west-1")), ["Replace"]),
    ("scale up", pool(dep()), pool(dep(replicas=3)), ["Scale"]),
    ("scale down", pool(dep(replicas=3)), pool(dep()), ["Scale"]),
    ("price only", pool(dep()), pool(dep(price_per_gpu_hour=2.5)), ["Update"]),
    (
        "adapter added",
        pool(dep(model=BASE)),
        pool(dep(model=BASE, adapters=[adapter("p", 1)])),
        ["LoadAdapter"],
    ),
    (
        "adapter removed",
        pool(dep(model=BASE, adapters=[adapter("p", 1)])),
        pool(dep(model=BASE)),
        ["UnloadAdapter"],
    ),
    (
        "adapter upgraded in place",
        pool(dep(model=BASE, adapters=[adapter("p", 1)])),
        pool(dep(model=BASE, adapters=[adapter("p", 2)])),
        ["LoadAdapter"],
    ),
    (
        "adapters reordered",
        pool(dep(model=BASE, adapters=[adapter("p", 1), adapter("q", 1)])),
        pool(dep(model=BASE, adapters=[adapter("q", 1), adapter("p", 1)])),
        [],
    ),
    ("deployments reordered", pool(dep("a"), dep("b")), pool(dep("b"), dep("a")), []),
    (
        "new version and more replicas: one replace carries both",
        pool(dep()),
        pool(dep(model=model(2), replicas=2)),
        ["Replace"],
    ),
    (
        "capacity first: start, replace, scale up, load, record, unload, scale down, stop",
        pool(
            dep("b"),
            dep("c"),
            dep("d", model=BASE, adapters=[adapter("p", 1)]),
            dep("e", replicas=2),
            dep("f"),
        ),
        pool(
            dep("a"),
            dep("b", model=model(2)),
            dep("c", replicas=2, price_per_gpu_hour=1.0),
            dep("d", model=BASE, adapters=[adapter("q", 1)]),
            dep("e"),
        ),
        ["Start", "Replace", "Scale", "LoadAdapter", "Update", "UnloadAdapter", "Scale", "Stop"],
    ),
]


@pytest.mark.parametrize(
    ("current", "desired", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan(current: Pool, desired: Pool, expected: list[str]) -> None:
    actions = d.diff(current, desired)
    assert kinds(actions) == expected
    assert d.same_state(d.apply(current, actions), desired)
    assert d.diff(d.apply(current, actions), desired) == ()


def test_a_replace_names_what_changed_and_its_phases() -> None:
    (action,) = d.diff(pool(dep()), pool(dep(model=model(2, "FP8_DYNAMIC"), replicas=2)))
    assert isinstance(action, d.Replace) and action.changed == ("model",)
    assert "support v1 (W8A8) -> support v2 (FP8_DYNAMIC), 2 replicas" in action.describe()
    assert "smoke-check them, then shift traffic, then stop the old servers" in action.describe()
    assert d.describe(()) == ["nothing to do: the pool already serves this"]


def test_every_field_of_a_deployment_has_one_way_to_change() -> None:
    groups = [d.REPLACE_FIELDS, d.SCALE_FIELDS, d.ADAPTER_FIELDS, d.RECORD_FIELDS, d.KEY_FIELDS]
    fields = [f for group in groups for f in group]
    assert sorted(fields) == sorted(Deployment.model_fields)


# every state one deployment can be in, over a small universe of values
VARIANTS = [
    dep(model=m, replicas=r, adapters=a, price_per_gpu_hour=p)
    for m, r, a, p in itertools.product(
        [BASE, model(1), model(2), model(2, "FP8_DYNAMIC")],
        [1, 2],
        [[], [adapter("p", 1)], [adapter("p", 2)], [adapter("p", 1), adapter("q", 1)]],
        [0.0, 1.5],
    )
]
STATES = [None, *VARIANTS]


def test_every_pair_of_states_of_one_deployment() -> None:
    for before, after in itertools.product(STATES, STATES):
        current = pool(*([before] if before else []))
        desired = pool(*([after] if after else []))
        _check(current, desired)


def test_random_pools_of_several_deployments() -> None:
    rng = random.Random(11)
    names = ["a", "b", "c", "d"]

    def random_pool() -> Pool:
        chosen = [n for n in names if rng.random() < 0.6]
        rng.shuffle(chosen)
        return pool(*(rng.choice(VARIANTS).model_copy(update={"name": n}) for n in chosen))

    for _ in range(1500):
        _check(random_pool(), random_pool())


def _check(current: Pool, desired: Pool) -> None:
    actions = d.diff(current, desired)
    after = d.apply(current, actions)
    assert d.same_state(after, desired), (current, desired, actions)
    assert d.diff(after, desired) == ()
    assert (actions == ()) == d.same_state(current, desired)
    order = ["Start", "Replace", "LoadAdapter", "Update", "UnloadAdapter", "Stop"]
    seen = [order.index(k) for k in kinds(actions) if k in order]
    assert seen == sorted(seen)
    for action in actions:  # a replaced deployment takes no other action
        if isinstance(action, d.Replace):
            others = [a for a in actions if a is not action and getattr(a, "name", None) == action.new.name]
            others += [a for a in actions if getattr(a, "deployment", None) == action.new.name]
            assert others == []
