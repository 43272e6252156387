"""The whole recipe on CPU with the real parts: trl fine-tune -> llmcompressor FP8 -> chain check through vLLM ->
lm-eval gate through vLLM -> MLflow registration with lineage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle import manifest
from lifecycle.api import Lifecycle, Outcome
from lifecycle.errors import StageError
from lifecycle.registry.stage import Register
from lifecycle.results import GateResult, QuantizeResult, ServeTarget
from lifecycle.runner import OpenRun, run_stage
from lifecycle.runs import RunDir

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def started() -> list[Path]:
    return []


@pytest.fixture(scope="module")
def outcome(lora_run: RunDir, api: Lifecycle, started: list[Path]) -> Outcome:
    """The rest of the pipeline on the trained LoRA run, through the API, counting the vLLM servers it starts."""
    serve = api.serve(lora_run.path / "engines")

    def counting(model_dir: Path, loras: dict[str, Path]):  # type: ignore[no-untyped-def]
        started.append(model_dir)
        return serve(model_dir, loras)

    counted = Lifecycle(api.settings, project_dir=api.project_dir, serve=counting)
    return counted.run(lora_run)


@pytest.fixture(scope="module")
def gated(outcome: Outcome) -> GateResult:
    return outcome.gate


def test_each_artifact_is_served_once(outcome: Outcome, started: list[Path]) -> None:
    quantized = Path(outcome.quantize.model_dir)
    base = Path(outcome.train.base_model_dir)
    # general-facts is multiple choice (prompt log-probs): the baseline base model gets a server without LoRA
    assert started == [base, Path(outcome.train.model_dir), quantized, base]


def test_chain_check_passes_the_honest_merge_and_measures_held_out_accuracy(outcome: Outcome) -> None:
    report = outcome.chain
    assert report.passed
    by_link = {(p.left, p.right): p for p in report.pairs}
    assert by_link[("adapter", "merged")].agreement >= 0.9
    assert ("merged", "quantized") in by_link
    assert report.samples and report.samples[0]["quantized"].strip()
    accuracy = report.accuracy
    assert accuracy["base"] is not None and accuracy["base"] <= 0.3
    assert accuracy["adapter"] is not None and accuracy["adapter"] >= accuracy["base"] + 0.5
    assert accuracy["merged"] == pytest.approx(accuracy["adapter"], abs=0.1)


def test_the_mlflow_run_ends_finished_once_the_run_is_registered(
    outcome: Outcome, lora_run: RunDir, api: Lifecycle
) -> None:
    assert outcome.registered is not None
    mlflow_run = lora_run.info().mlflow_run_id
    assert mlflow_run is not None
    record = api.tracker.get_run(mlflow_run)
    assert record.status == "FINISHED"
    assert record.metrics["chain.adapter.accuracy"] == pytest.approx(outcome.chain.accuracy["adapter"])
    assert record.tags["lifecycle.registered"] == f"{outcome.registered.name} v{outcome.registered.version}"


def test_gate_passes_the_real_improvement_and_reports_every_rule(gated: GateResult) -> None:
    assert gated.passed, gated.verdict
    rules = {(r.task, r.rule) for r in gated.verdict.rules}
    assert ("support-tickets", "improve") in rules and ("general-facts", "no_regress") in rules
    assert any(r.rule == "quant_recovery" for r in gated.verdict.rules)
    tickets = next(r for r in gated.verdict.rules if r.task == "support-tickets" and r.rule == "improve")
    assert (
        tickets.delta is not None
        and tickets.delta > 0.5
        and tickets.p_value is not None
        and tickets.p_value < 1e-6
    )
    assert gated.baseline.kind == "base"
    assert Path(gated.report_png).stat().st_size > 1000
    assert "support-tickets" in Path(gated.report_md).read_text()


def test_registered_version_carries_lineage_and_the_candidate_alias(
    lora_run: RunDir, api: Lifecycle, outcome: Outcome, tmp_path: Path
) -> None:
    version = outcome.registered
    assert version is not None
    record = api.registry.by_alias(version.name, "candidate")
    assert record is not None and record.version == version.version
    quantized = lora_run.load("quantize", QuantizeResult)
    tags = record.tags
    assert tags["lifecycle.weights_manifest_digest"] == quantized.manifest_digest
    assert tags["lifecycle.quant.scheme"] == lora_run.load("target", ServeTarget).scheme == quantized.scheme
    assert tags["lifecycle.quant.config_sha256"] == quantized.config_sha256
    assert tags["lifecycle.recipe_sha256"] == lora_run.info().recipe_sha256
    assert tags["lifecycle.gate"] == "passed"
    assert tags["version.engine"].startswith("vllm")
    assert any(key.startswith("gate.support-tickets.exact_match") for key in tags)
    assert "PASSED" in record.description
    # what the registry serves is byte for byte what was gated
    fetched = api.registry.download(version.name, "candidate", tmp_path / "fetched")
    assert manifest.verify(fetched).digest == quantized.manifest_digest
    assert api.register(lora_run) == version  # registering again is a no-op


def test_a_failed_gate_registers_nothing(
    lora_run: RunDir, api: Lifecycle, gated: GateResult, tmp_path: Path
) -> None:
    import shutil

    copy = RunDir(tmp_path / "failed")
    shutil.copytree(lora_run.path, copy.path, ignore=shutil.ignore_patterns("engines"))
    (copy.results_dir / "register.json").unlink(missing_ok=True)
    failed = gated.model_copy(update={"verdict": gated.verdict.model_copy(update={"passed": False})})
    copy.save("gate", failed)
    before = len(api.registry.versions("support-tickets"))
    with pytest.raises(StageError, match="nothing is registered"):
        run_stage(Register(api.registry, "abc123", lambda: "vllm 0"), OpenRun.open(copy, None))
    assert len(api.registry.versions("support-tickets")) == before


def _cli(api: Lifecycle, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LIFECYCLE_HOME": str(api.settings.home),
        "LIFECYCLE_SERVE_PYTHON": str(api.settings.serve_python),
    }
    return subprocess.run(
        [sys.executable, "-m", "lifecycle.cli.app", *args], capture_output=True, text=True, env=env, cwd=REPO
    )


def test_stage_commands_show_a_finished_run_and_refuse_to_redo_a_registered_one(
    outcome: Outcome, lora_run: RunDir, api: Lifecycle
) -> None:
    run_id = lora_run.info().run_id
    shown = _cli(api, "gate", run_id)
    assert (
        shown.returncode == 2 and "already registered" in shown.stderr
    )  # a registered version's gate is final
    again = _cli(api, "register", run_id)
    assert again.returncode == 0, again.stderr
    assert f"version {outcome.registered.version}" in again.stdout  # type: ignore[union-attr]
    redo = _cli(api, "quantize", run_id, "--redo")
    assert redo.returncode == 2 and "already registered" in redo.stderr and "Traceback" not in redo.stderr
    assert lora_run.has("quantize") and lora_run.has("chain")  # refused: nothing was discarded
    listed = _cli(api, "runs", "--json")
    assert listed.returncode == 0 and run_id in listed.stdout
