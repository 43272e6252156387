"""Drift between the pool file, the registry's production aliases and the running pool: the pure rules case by
case and over every pair of states of one deployment, then `lifecycle verify FILE --live` against a real MLflow
sqlite store with no pool running here."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle import manifest
from lifecycle.pool.drift import drift, registry_drift, running_drift
from lifecycle.pool.schema import Adapter, BaseWeights, Deployment, Engine, Pool, RegisteredModel, VllmArgs
from lifecycle.promote import edit
from lifecycle.registry.models import Registry
from lifecycle.registry.tracking import Tracker

REPO = Path(__file__).parents[2]
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


BASE = BaseWeights(kind="base", source="/models/tiny", manifest_digest=BASE_DIGEST)


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


def prod(**versions: int) -> dict[str, dict[str, str]]:
    return {name.replace("_", "-"): {"production": str(v), "candidate": "9"} for name, v in versions.items()}


# ------------------------------------------------------------------------------------------------ the registry


def test_agreement_is_silent() -> None:
    file = pool(dep("a"), dep("t", model=BASE, adapters=[adapter(2)]))
    assert drift(file, prod(support=1, tickets_lora=2), file) == []
    assert drift(file, prod(support=1, tickets_lora=2), None) == []
    # other aliases, and models with no production, are not drift
    assert registry_drift(pool(), {"other": {"candidate": "3"}}) == []


def test_production_elsewhere_missing_or_on_an_unpinned_model() -> None:
    file = pool(dep("a"), dep("t", model=BASE, adapters=[adapter(2)]))
    assert registry_drift(file, prod(support=2, other=4)) == [
        "other: production names v4, but the pool file pins no version of other (an alias set by hand, or left "
        "behind)",
        "support: the pool file pins v1 (a), but production names v2 (moved by hand, or `lifecycle apply` has "
        "not run since the pool file changed)",
        "tickets-lora: the pool file pins v2 (t), but no version has the production alias (`lifecycle apply` has "
        "not run since it was pinned, or the alias was removed by hand)",
    ]


def test_a_model_pinned_at_several_versions() -> None:
    file = pool(dep("a"), dep("canary", model=model(2)))
    assert registry_drift(file, prod(support=1)) == []
    assert registry_drift(file, prod(support=2)) == []
    assert registry_drift(file, {}) == []  # removed by the apply: it named neither
    (problem,) = registry_drift(file, prod(support=3))
    assert problem.startswith("support: the pool file pins v1 (a), v2 (canary), but production names v3")


# ------------------------------------------------------------------------------------------------ the running pool


def test_deployments_missing_or_extra() -> None:
    file = pool(dep("a"), dep("b", model=model(2, "faq")))
    running = pool(dep("a"), dep("c", model=BASE))
    assert running_drift(file, running) == [
        f"deployment 'b': in the pool file (faq v2, weights {sha('2')[:12]}), but not running",
        f"deployment 'c': running (base /models/tiny, weights {BASE_DIGEST[:12]}), but not in the pool file",
    ]
    assert running_drift(file, pool()) == [
        f"deployment 'a': in the pool file (support v1, weights {sha('1')[:12]}), but not running",
        f"deployment 'b': in the pool file (faq v2, weights {sha('2')[:12]}), but not running",
    ]


def test_version_replicas_adapters_and_settings() -> None:
    file = pool(dep("a", replicas=2, adapters=[], engine=Engine(args=VllmArgs(max_model_len=2048))))
    running = pool(dep("a", model=model(3), replicas=1, residency="rented", region="eu-west-1"))
    assert running_drift(file, running) == [
        f"deployment 'a': runs support v3, weights {sha('3')[:12]}, but the pool file pins support v1, weights "
        f"{sha('1')[:12]}",
        "deployment 'a': runs 1 replica(s), but the pool file asks for 2",
        "deployment 'a': runs with engine {}, but the pool file says {'args': {'max_model_len': 2048}}",
        "deployment 'a': runs with residency 'rented', but the pool file says 'self_hosted'",
        "deployment 'a': runs with region 'eu-west-1', but the pool file says None",
    ]


def test_adapters_missing_extra_or_at_another_version() -> None:
    file = pool(dep("t", model=BASE, adapters=[adapter(2), adapter(1, "faq")]))
    running = pool(dep("t", model=BASE, adapters=[adapter(1), adapter(1, "intents")]))
    assert running_drift(file, running) == [
        f"deployment 't': adapter faq (faq-lora v1, weights {sha('6')[:12]}) is pinned, but not loaded",
        f"deployment 't': adapter intents (intents-lora v1, weights {sha('6')[:12]}) is loaded, but not in the "
        "pool file",
        f"deployment 't': adapter tickets (tickets-lora v1, weights {sha('6')[:12]}) is loaded, but the pool file "
        f"pins tickets (tickets-lora v2, weights {sha('7')[:12]})",
    ]
    # the order adapters are listed in is not drift
    assert running_drift(file, pool(dep("t", model=BASE, adapters=[adapter(1, "faq"), adapter(2)]))) == []


# One deployment's states; drift between any two is reported iff they differ, once per differing aspect
STATES = {
    "v1": dep("a"),
    "v2": dep("a", model=model(2)),
    "v1x2": dep("a", replicas=2),
    "v1+adapter": dep("a", adapters=[adapter(1)]),
    "v1+adapter2": dep("a", adapters=[adapter(2)]),
    "v1 price": dep("a", price_per_gpu_hour=2.5),
    "v2x3+adapter": dep("a", model=model(2), replicas=3, adapters=[adapter(1)]),
    "gone": None,
}


@pytest.mark.parametrize(("a", "b"), list(itertools.product(STATES, STATES)))
def test_every_pair_of_states(a: str, b: str) -> None:
    want, have = STATES[a], STATES[b]
    file = pool(*([want] if want else []))
    running = pool(*([have] if have else []))
    problems = running_drift(file, running)
    assert (problems == []) == (want == have)
    if want is not None and have is not None:
        differing = {f for f in Deployment.model_fields if getattr(want, f) != getattr(have, f)}
        assert len(problems) == len(differing)  # one line per aspect (one adapter here)
    elif want != have:
        assert len(problems) == 1
    assert drift(file, {}, running)[len(registry_drift(file, {})) :] == problems


# ------------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Registry, Path]:
    root = tmp_path_factory.mktemp("drift-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry = Registry(Tracker(uri, root / "artifacts"))
    for version in (1, 2):
        folder = root / f"support-{version}"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(bytes([version]) * 64)
        manifest.write(folder)
        run = registry.tracker.start_run("drift-tests", f"support-{version}", {})
        registry.register("support", run, folder, {"lifecycle.gate": "passed"}, "", "candidate")
    return uri, registry, root


def live(uri: str, home: Path, path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "LIFECYCLE_HOME": str(home),
        "MLFLOW_DISABLE_TELEMETRY": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "lifecycle.cli.app", "verify", str(path), "--live"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )


def test_verify_live_with_no_pool_running(store: tuple[str, Registry, Path], tmp_path: Path) -> None:
    uri, registry, root = store
    record = registry.get("support", "1")
    data = edit.yaml().load("# pool under test\ndeployments: []\n")
    edit.add_deployment(
        data,
        dep("support", model=model(1).model_copy(update={"artifact": record.source})).model_dump(mode="json"),
    )
    path = tmp_path / "pool.yaml"
    path.write_text(edit.dump(data))
    home = tmp_path / "home"  # no `lifecycle serve` has ever run here

    out = live(uri, home, path)
    assert out.returncode == 1, out.stderr
    assert "note: no pool runs on this machine" in out.stdout
    assert out.stderr.strip().splitlines() == [
        "drift: support: the pool file pins v1 (support), but no version has the production alias (`lifecycle "
        "apply` has not run since it was pinned, or the alias was removed by hand)"
    ]

    registry.set_alias("support", "production", "1")
    out = live(uri, home, path)
    assert out.returncode == 0, out.stderr
    assert f"ok {path}: the registry's aliases agree with it ({uri})" in out.stdout
    assert registry.aliases("support") == {"candidate": "2", "production": "1"}  # it never changes anything

    registry.set_alias("support", "production", "2")
    out = live(uri, home, path)
    assert (
        out.returncode == 1
        and "drift: support: the pool file pins v1 (support), but production names v2" in (out.stderr)
    )

    path.write_text("deployments: [{name: Bad}]\n")
    out = live(uri, home, path)
    assert out.returncode == 2 and "deployments.0" in out.stderr and "Traceback" not in out.stderr
