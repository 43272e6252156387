"""The pool file is validated like a recipe: every error at once, FILE:LINE, did-you-mean, exit 2; and it needs
no MLflow store, so it validates in a fresh clone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.errors import RecipeError
from lifecycle.pool.load import is_pool_file, load_pool

REPO = Path(__file__).parents[2]
SHA = "a" * 64
BASE_SHA = "b" * 64

GOOD = f"""\
# a pool
deployments:
  - name: support
    model:
      kind: registered
      name: demo-support
      version: 3
      artifact: file:///store/served-model
      manifest_digest: {SHA}
      quantization:
        scheme: W8A8
        config_sha256: {SHA}
      recipe_sha256: {SHA}
      base_model: /models/tiny
    engine:
      kind: vllm
      args:
        structured_outputs_backend: xgrammar
        tool_call_parser: hermes
    replicas: 2
    residency: self_hosted
    price_per_gpu_hour: 0.0
  - name: tiny-base
    model:
      kind: base
      source: builtin:tiny-llama
      manifest_digest: {BASE_SHA}
    adapters:
      - name: tickets
        model: demo-tickets-lora
        version: 1
        artifact: file:///store/lora
        manifest_digest: {SHA}
        base_manifest_digest: {BASE_SHA}
        recipe_sha256: {SHA}
    residency: rented
    region: eu-west-1
    gpus_per_replica: 1
    price_per_gpu_hour: 2.1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pool.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        load_pool(path)
    return caught.value.problems


def test_the_shipped_pool_validates_without_mlflow() -> None:
    loaded = load_pool(REPO / "serving" / "pool.yaml")
    assert is_pool_file(REPO / "serving" / "pool.yaml")
    assert not is_pool_file(REPO / "recipes" / "demo.yaml")
    assert loaded.pool.deployments == []


def test_a_full_pool_validates(tmp_path: Path) -> None:
    pool = load_pool(write(tmp_path, GOOD)).pool
    support, base = pool.deployments
    assert support.model.kind == "registered" and support.model.version == 3
    assert support.engine.args.tool_call_parser == "hermes" and support.replicas == 2
    assert base.adapters[0].name == "tickets" and base.residency == "rented"


def test_every_schema_error_at_once_with_its_line(tmp_path: Path) -> None:
    text = (
        GOOD.replace("replicas: 2", "replica: 2")
        .replace("version: 3", "version: 0")
        .replace("residency: self_hosted", "residency: on_prem")
        .replace(f"config_sha256: {SHA}", "config_sha256: abc")
        .replace("kind: base", "kind: bsae")
    )
    found = problems(write(tmp_path, text))
    path = tmp_path / "pool.yaml"
    assert any(
        p.startswith(f"{path}:20: deployments.0.replica: unknown field 'replica'; did you mean 'replicas'?")
        for p in found
    )
    assert f"{path}:7: deployments.0.model.version: Input should be greater than 0" in found
    assert any(p.startswith(f"{path}:12: deployments.0.model.quantization.config_sha256:") for p in found)
    assert any(
        p.startswith(f"{path}:21: deployments.0.residency: unknown value 'on_prem'") and "'self_hosted'" in p
        for p in found
    )
    assert any(
        p.startswith(f"{path}:25: deployments.1.model.kind: unknown kind 'bsae'; did you mean 'base'?")
        for p in found
    )
    assert len(found) == 5, found


def test_rules_across_deployments(tmp_path: Path) -> None:
    text = (
        GOOD.replace("name: tiny-base", "name: support")
        .replace(f"base_manifest_digest: {BASE_SHA}", f"base_manifest_digest: {SHA}")
        .replace("    region: eu-west-1\n", "")
    )
    found = problems(write(tmp_path, text))
    path = tmp_path / "pool.yaml"
    assert found[0] == f"{path}:23: deployments.1.name: 'support' is already served: names must be unique"
    assert found[1].startswith(
        f"{path}:34: deployments.1.adapters.0.base_manifest_digest: adapter 'tickets' was trained on"
    )
    assert found[2].startswith(
        f"{path}:36: deployments.1.residency: deployment 'support' is rented: name its region"
    )
    assert len(found) == 3


def test_bad_yaml_and_a_bad_top_level(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "deployments: [\n"))[0].startswith(f"{tmp_path / 'pool.yaml'}:")
    assert problems(write(tmp_path, "deployment: []\n")) == [
        f"{tmp_path / 'pool.yaml'}:1: deployment: unknown field 'deployment'; did you mean 'deployments'? "
        "(allowed: deployments)"
    ]


def test_lifecycle_validate_reports_a_bad_pool_and_exits_2(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD.replace("replicas: 2", "replicas: -1"))
    env = {**os.environ, "LIFECYCLE_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "lifecycle.cli.app", "validate"]
    out = subprocess.run([*cli, str(bad)], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 2, out.stderr
    assert f"{bad}:20: deployments.0.replicas: Input should be greater than 0" in out.stderr
    assert "Traceback" not in out.stderr
    good = subprocess.run([*cli, "serving/pool.yaml"], capture_output=True, text=True, env=env, cwd=REPO)
    assert good.returncode == 0, good.stderr
    assert "ok serving/pool.yaml" in good.stdout
    assert not (tmp_path / "home").exists()  # no MLflow store was opened or made
