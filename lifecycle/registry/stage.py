"""The register stage: a candidate that passed its gate becomes a routable version, with its whole lineage.

Nothing that failed (or never ran) a gate is registered: a failed candidate can never be promoted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lifecycle import manifest
from lifecycle.errors import StageError
from lifecycle.gate.report import render_markdown
from lifecycle.provenance import library_versions
from lifecycle.registry.models import Registry
from lifecycle.results import GateResult, QuantizeResult, RegisteredVersion, TrainResult
from lifecycle.runner import OpenRun
from lifecycle.runs import RunDir

STAGE = "register"


def lineage_tags(
    run_dir: RunDir, trained: TrainResult, quantized: QuantizeResult, gate: GateResult, engine: str
) -> dict[str, str]:
    """Everything needed to say where a version came from and why it was allowed in (pure given its inputs)."""
    info = run_dir.info()
    versions = library_versions()
    tags = {
        "lifecycle.run_id": info.run_id,
        "lifecycle.recipe": info.recipe_name,
        "lifecycle.recipe_sha256": info.recipe_sha256,
        "lifecycle.base_model": trained.base_model_dir,
        "lifecycle.base_manifest_digest": trained.base_manifest_digest,
        "lifecycle.method": trained.method,
        "lifecycle.weights_manifest_digest": quantized.manifest_digest,
        "lifecycle.merged_manifest_digest": trained.manifest_digest,
        "lifecycle.quant.scheme": quantized.scheme,
        "lifecycle.quant.config_sha256": quantized.config_sha256,
        "lifecycle.gate": "passed" if gate.passed else "failed",
        "lifecycle.gate.baseline": gate.baseline.kind
        + (f" v{gate.baseline.version}" if gate.baseline.version else ""),
        "lifecycle.cost.usd": f"{trained.cost.actual_usd:.2f}",
        "lifecycle.cost.source": trained.cost.source,
        "lifecycle.launch": ", ".join(f"{k}={v}" for k, v in sorted(trained.launch.items())),
        "version.engine": engine,
    }
    for split, stats in trained.data.items():
        tags[f"lifecycle.data.{split}.sha256"] = stats.sha256
        tags[f"lifecycle.data.{split}.rows"] = str(stats.rows)
    for lib in (
        "trl",
        "peft",
        "transformers",
        "torch",
        "llmcompressor",
        "compressed-tensors",
        "lm-eval",
        "lifecycle",
    ):
        tags[f"version.{lib}"] = versions.get(lib, "absent")
    for rule in gate.verdict.rules:
        key = f"gate.{rule.task}.{rule.metric}.{rule.rule}"
        tags[key] = (
            f"{rule.status}: delta={_num(rule.delta)} ci=[{_num(rule.ci_low)}, {_num(rule.ci_high)}] "
            f"p={_num(rule.p_value)} n={rule.n}"
        )
    return tags


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@dataclass(frozen=True)
class Register:
    """Register the run's quantized artifact if, and only if, its gate passed; `engine` is the serving engine's
    version, `git_commit` the project's."""

    registry: Registry
    git_commit: str
    engine: Callable[[], str]  # asked only when there is something to register
    name: str = STAGE
    result: type[RegisteredVersion] = RegisteredVersion

    def compute(self, run: OpenRun) -> RegisteredVersion:
        gate = run.dir.load("gate", GateResult)
        if not gate.passed:
            raise StageError(
                f"{run.path}: the gate failed ({gate.report_md}); nothing is registered. A failed candidate "
                "can never be promoted: fix the recipe and train again."
            )
        trained = run.dir.load("train", TrainResult)
        quantized = run.dir.load("quantize", QuantizeResult)
        served = Path(quantized.model_dir)
        manifest.verify(served)  # what is uploaded is exactly what was gated
        if run.info.mlflow_run_id is None:
            raise StageError(f"{run.path}: the run has no MLflow run to register a version from")
        tags = lineage_tags(run.dir, trained, quantized, gate, self.engine())
        tags["lifecycle.git_commit"] = self.git_commit
        recipe = run.recipe
        description = describe(recipe.name, recipe.description, trained, quantized, gate)
        record = self.registry.register(
            recipe.registry.model_name,
            run.info.mlflow_run_id,
            served,
            tags,
            description,
            recipe.registry.alias,
        )
        return RegisteredVersion(
            name=record.name,
            version=record.version,
            alias=recipe.registry.alias,
            source=record.source,
            mlflow_run_id=run.info.mlflow_run_id,
            tags=tags,
        )

    def reuse(self, run: OpenRun, done: RegisteredVersion) -> RegisteredVersion:
        return done

    def record(self, run: OpenRun, result: RegisteredVersion) -> None:
        assert run.tracker is not None and run.mlflow_run_id is not None
        run.tracker.set_tags(run.mlflow_run_id, {"lifecycle.registered": f"{result.name} v{result.version}"})


def describe(
    name: str, purpose: str, trained: TrainResult, quantized: QuantizeResult, gate: GateResult
) -> str:
    """The version's description in the registry UI: what it is, how it was made, why it passed."""
    lines = [
        f"**{name}**: {purpose}".rstrip(": "),
        "",
        f"- {trained.method} fine-tune of `{Path(trained.base_model_dir).name}`, {trained.steps} steps, "
        f"held-out accuracy {trained.base_eval_accuracy} -> {trained.eval_accuracy}",
        f"- served artifact: {quantized.scheme} ({quantized.bytes_after / 1e6:.1f} MB), "
        f"config sha256 {quantized.config_sha256[:12]}",
        f"- baseline: {gate.baseline.kind}" + (f" v{gate.baseline.version}" if gate.baseline.version else ""),
        "",
        render_markdown(gate.verdict),
    ]
    return "\n".join(lines)
