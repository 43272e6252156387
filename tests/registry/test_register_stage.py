"""The register stage against a real MLflow sqlite store, on a run directory holding the earlier stages' results
(tiny weight folders with manifests, no training): it registers what can be served, the quantized model and a
LoRA run's adapter as a version of its own, each with the tags a promotion and `lifecycle verify` need."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lifecycle import manifest
from lifecycle.pool import pins
from lifecycle.pool.load import parse_pool
from lifecycle.pool.verify import verify_pool
from lifecycle.promote import edit
from lifecycle.promote.versions import RegisteredVersions
from lifecycle.recipe.load import load_recipe
from lifecycle.registry.models import ADAPTER_ARTIFACT, SERVED_ARTIFACT, Registry
from lifecycle.registry.stage import Register, adapter_model_name
from lifecycle.registry.tracking import Tracker
from lifecycle.results import (
    Baseline,
    ChainReport,
    Cost,
    DataStats,
    GateResult,
    PairStats,
    QuantizeResult,
    RegisteredVersion,
    RuleResult,
    RunInfo,
    TrainResult,
    Verdict,
)
from lifecycle.runner import OpenRun, run_stage
from lifecycle.runs import RunDir

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("register-store")
    return Registry(Tracker(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"))


def folder(path: Path, seed: int, *, adapter: bool = False) -> str:
    path.mkdir(parents=True)
    if adapter:
        (path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 16}')
        (path / "adapter_model.safetensors").write_bytes(bytes(range(seed, seed + 100)) * 4)
    else:
        (path / "config.json").write_text('{"quantization_config": {"quant_method": "compressed-tensors"}}')
        (path / "model.safetensors").write_bytes(bytes((seed + i) % 256 for i in range(2048)))
    return manifest.write(path).digest


def chain_report(*, adapter_link: bool = True, passed: bool = True) -> ChainReport:
    pairs = [
        PairStats(
            left="merged",
            right="quantized",
            n=16,
            agreement=0.94,
            mean_abs_logprob_drift=0.01,
            max_abs_logprob_drift=0.1,
            disagreeing=[3],
        )
    ]
    if adapter_link:
        pairs.insert(
            0,
            PairStats(
                left="adapter",
                right="merged",
                n=16,
                agreement=1.0,
                mean_abs_logprob_drift=0.0,
                max_abs_logprob_drift=0.0,
                disagreeing=[],
            ),
        )
    accuracy: dict[str, float | None] = {"base": 0.05, "merged": 0.95, "quantized": 0.93}
    if adapter_link:
        accuracy["adapter"] = 0.9625
    return ChainReport(
        n_prompts=16, max_tokens=16, pairs=pairs, samples=[], accuracy=accuracy, passed=passed, problems=[]
    )


def make_run(
    root: Path,
    registry: Registry,
    name: str,
    *,
    lora: bool = True,
    residency: str | None = None,
    chain: ChainReport | None = None,
) -> RunDir:
    """A run directory as the pipeline leaves it before registration: recipe, run info, and the results of
    train, quantize, chain and gate (passed), the weights tiny folders with manifests."""
    run_dir = RunDir(root / name)
    run_dir.path.mkdir(parents=True)
    overrides = [f"name={name}", f"register.model_name={name}-model"]
    if residency:
        overrides.append(f"data.residency={residency}")
    if not lora:
        overrides.append("method={kind: full}")
    recipe = load_recipe(REPO / "recipes" / "demo.yaml", overrides).recipe
    with run_dir.recipe_path.open("w") as fh:
        YAML().dump(recipe.model_dump(mode="json", by_alias=True, exclude_none=True), fh)
    mlflow_run = registry.tracker.start_run("register-tests", name, {})
    run_dir.write_info(
        RunInfo(
            run_id=name,
            recipe_name=name,
            recipe_sha256="d" * 64,
            created="2025-01-01T00:00:00",
            mlflow_run_id=mlflow_run,
        )
    )
    base_digest = "b" * 64
    merged = root / f"{name}-merged"
    merged_digest = folder(merged, 3)
    adapter_dir = root / f"{name}-adapter"
    adapter_digest = folder(adapter_dir, 5, adapter=True) if lora else None
    quantized = root / f"{name}-quantized"
    quantized_digest = folder(quantized, 7)
    run_dir.save(
        "train",
        TrainResult(
            model_dir=str(merged),
            manifest_digest=merged_digest,
            adapter_dir=str(adapter_dir) if adapter_digest else None,
            base_model_dir="/models/tiny-llama",
            base_manifest_digest=base_digest,
            method="lora" if lora else "full",
            steps=200,
            resumed_from_step=None,
            final_loss=0.1,
            eval_accuracy=0.95,
            base_eval_accuracy=0.05,
            wall_s=30.0,
            data={"train": DataStats(path="train.jsonl", sha256="f" * 64, rows=500)},
            cost=Cost(),
            launch={"kind": "local"},
        ),
    )
    run_dir.save(
        "quantize",
        QuantizeResult(
            model_dir=str(quantized),
            manifest_digest=quantized_digest,
            scheme="FP8_DYNAMIC",
            quantization_config={},
            config_sha256="c" * 64,
            calibration_ids=[],
            source_dir=str(merged),
            source_manifest_digest=merged_digest,
            bytes_before=4096,
            bytes_after=2048,
            wall_s=1.0,
        ),
    )
    run_dir.save("chain", chain or chain_report(adapter_link=lora))
    rule = RuleResult(
        task="support-tickets",
        rule="improve",
        metric="exact_match",
        reference="baseline",
        higher_is_better=True,
        n=80,
        candidate=0.95,
        baseline=0.05,
        delta=0.9,
        ci_low=0.8,
        ci_high=0.97,
        confidence=0.95,
        p_value=1e-9,
        wins=72,
        losses=0,
        threshold=0.2,
        status="pass",
        reason="improved",
    )
    run_dir.save(
        "gate",
        GateResult(
            verdict=Verdict(passed=True, rules=[rule], seed=0),
            baseline=Baseline(kind="base", model_dir="/m"),
            candidate_dir=str(quantized),
            merged_dir=str(merged),
            scores={},
            report_md=str(root / "report.md"),
            report_png=str(root / "report.png"),
            wall_s=5.0,
        ),
    )
    return run_dir


def register(registry: Registry, run_dir: RunDir) -> RegisteredVersion:
    return run_stage(
        Register(registry, "0" * 40, lambda: "vllm 0.0-test"), OpenRun.open(run_dir, registry.tracker)
    )


def test_a_lora_run_registers_the_model_and_the_adapter(registry: Registry, tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, registry, "lora-run", residency="self_hosted")
    done = register(registry, run_dir)

    assert done.name == "lora-run-model" and done.tags[pins.ARTIFACT] == "model"
    assert done.tags[pins.RESIDENCY] == "self_hosted"
    assert done.adapter is not None
    adapter = done.adapter
    assert adapter.name == adapter_model_name("lora-run-model") == "lora-run-model-lora"
    assert adapter.alias == "candidate" and adapter.source.endswith("/" + ADAPTER_ARTIFACT)
    assert done.source.endswith("/" + SERVED_ARTIFACT)
    # the saved result is typed, adapter included, and reused as is
    assert run_dir.load("register", RegisteredVersion) == done
    assert register(registry, run_dir) == done

    record = registry.get(adapter.name, adapter.version)
    tags = record.tags
    train = run_dir.load("train", TrainResult)
    assert tags[pins.ARTIFACT] == "adapter"
    assert tags[pins.DIGEST] == manifest.verify(Path(train.adapter_dir or "")).digest
    assert tags[pins.BASE_DIGEST] == train.base_manifest_digest and tags[pins.RECIPE] == "d" * 64
    assert tags[pins.ADAPTER_OF] == f"lora-run-model v{done.version}"
    assert tags[pins.ADAPTER_ACCURACY] == "0.9625" and tags[pins.ADAPTER_AGREEMENT] == "1 (n=16)"
    assert tags[pins.GATE] == "passed" and "gate.support-tickets.exact_match.improve" in tags
    assert tags[pins.RESIDENCY] == "self_hosted"
    assert not any(key.startswith("lifecycle.quant.") for key in tags)  # an adapter is served as trained
    assert pins.evidence_problems(record, adapter=True) == []
    assert "chain check's adapter link" in record.description and "exact match 0.9625" in record.description
    assert f"lora-run-model v{done.version}" in record.description and "PASSED" in record.description

    model = registry.get(done.name, done.version)
    assert model.tags[pins.DIGEST] == run_dir.load("quantize", QuantizeResult).manifest_digest
    assert pins.evidence_problems(model) == []
    mlflow_tags = registry.tracker.get_run(run_dir.info().mlflow_run_id or "").tags
    assert mlflow_tags["lifecycle.registered.adapter"] == f"lora-run-model-lora v{adapter.version}"

    # what CI checks on a pull request pinning the adapter on a base deployment: it passes, artifact included
    data = edit.yaml().load("deployments: []\n")
    base = {"kind": "base", "source": "builtin:tiny-llama", "manifest_digest": train.base_manifest_digest}
    pin = pins.adapter_pin(record, edit.served_name(record.name)).model_dump(mode="json")
    edit.add_deployment(
        data,
        {
            "name": "tiny",
            "model": base,
            "adapters": [pin],
            "residency": "self_hosted",
            "price_per_gpu_hour": 0.0,
        },
    )
    path = tmp_path / "pool.yaml"
    path.write_text(edit.dump(data))
    versions = RegisteredVersions(registry)
    assert verify_pool(parse_pool(path.read_text(), path), versions) == []
    fetched = registry.download_version(record, tmp_path / "fetched")
    assert (fetched / "adapter_config.json").is_file()
    assert manifest.verify(fetched).digest == tags[pins.DIGEST]


def test_a_register_stage_stopped_part_way_does_not_register_twice(
    registry: Registry, tmp_path: Path
) -> None:
    run_dir = make_run(tmp_path, registry, "again-run")
    stage = Register(registry, "0" * 40, lambda: "vllm 0.0-test")
    first = stage.compute(OpenRun.open(run_dir, registry.tracker))  # computed, never saved: then a crash
    second = stage.compute(OpenRun.open(run_dir, registry.tracker))
    assert second == first
    assert [v.version for v in registry.versions("again-run-model")] == ["1"]
    assert [v.version for v in registry.versions("again-run-model-lora")] == ["1"]
    assert pins.RESIDENCY not in first.tags  # the recipe names no residency


def test_no_adapter_without_one_or_without_the_chain_checking_it(registry: Registry, tmp_path: Path) -> None:
    full = register(registry, make_run(tmp_path, registry, "full-run", lora=False))
    assert full.adapter is None and full.tags[pins.ARTIFACT] == "model"
    assert registry.versions("full-run-model-lora") == []

    unchecked = make_run(tmp_path, registry, "unchecked-run", chain=chain_report(adapter_link=False))
    assert register(registry, unchecked).adapter is None
    assert registry.versions("unchecked-run-model-lora") == []


def test_results_saved_before_adapters_were_registered_still_load(tmp_path: Path) -> None:
    old = {"name": "m", "version": "1", "alias": "candidate", "source": "s", "mlflow_run_id": "r", "tags": {}}
    (tmp_path / "register.json").write_text(json.dumps(old))
    assert RegisteredVersion.model_validate_json((tmp_path / "register.json").read_text()).adapter is None
