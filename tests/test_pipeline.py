"""The whole recipe on CPU with the real parts: trl fine-tune -> llmcompressor FP8 -> chain check through vLLM ->
lm-eval gate through vLLM -> MLflow registration with lineage."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from lifecycle import manifest
from lifecycle.cli.context import Context
from lifecycle.errors import StageError
from lifecycle.gate.stage import GateResult
from lifecycle.pipeline import run_gate, run_register
from lifecycle.quantize import stage as quantize_stage
from lifecycle.quantize.target import ServeTarget
from lifecycle.runs import RunDir
from lifecycle.settings import load_settings

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ctx(lifecycle_home: Path, serve_python: Path) -> Context:
    env = {"LIFECYCLE_HOME": str(lifecycle_home), "LIFECYCLE_SERVE_PYTHON": str(serve_python)}
    return Context(settings=load_settings(env, cwd=REPO), project_dir=REPO)


@pytest.fixture(scope="module")
def gated(lora_run: RunDir, ctx: Context) -> GateResult:
    quantize_stage.run(lora_run, ctx.tracker)
    quantize_stage.run_chain_check(lora_run, ctx.serve_factory(lora_run.path / "engines"), ctx.tracker)
    return run_gate(lora_run, ctx, Console(quiet=True))


def test_chain_check_passes_the_honest_merge(lora_run: RunDir, gated: GateResult) -> None:
    report = lora_run.load("chain", quantize_stage.ChainReport)
    assert report.passed
    by_link = {(p.left, p.right): p for p in report.pairs}
    assert by_link[("adapter", "merged")].agreement >= 0.9
    assert ("merged", "quantized") in by_link
    assert report.samples and report.samples[0]["quantized"].strip()


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
    lora_run: RunDir, ctx: Context, gated: GateResult, tmp_path: Path
) -> None:
    version = run_register(lora_run, ctx)
    record = ctx.registry.by_alias(version.name, "candidate")
    assert record is not None and record.version == version.version
    quantized = lora_run.load("quantize", quantize_stage.QuantizeResult)
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
    fetched = ctx.registry.download(version.name, "candidate", tmp_path / "fetched")
    assert manifest.verify(fetched).digest == quantized.manifest_digest
    assert run_register(lora_run, ctx) == version  # registering again is a no-op


def test_a_failed_gate_registers_nothing(
    lora_run: RunDir, ctx: Context, gated: GateResult, tmp_path: Path
) -> None:
    import shutil

    copy = RunDir(tmp_path / "failed")
    shutil.copytree(lora_run.path, copy.path, ignore=shutil.ignore_patterns("engines"))
    (copy.results_dir / "register.json").unlink(missing_ok=True)
    failed = gated.model_copy(update={"verdict": gated.verdict.model_copy(update={"passed": False})})
    copy.save("gate", failed)
    before = len(ctx.registry.versions("support-tickets"))
    with pytest.raises(StageError, match="nothing is registered"):
        run_register(copy, ctx)
    assert len(ctx.registry.versions("support-tickets")) == before
