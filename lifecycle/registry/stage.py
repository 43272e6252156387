"""The register stage: a candidate that passed its gate becomes a routable version, with its whole lineage.

Nothing that failed (or never ran) a gate is registered: a failed candidate can never be promoted. What is
registered is what can be served: the quantized model (tag lifecycle.artifact=model) and, for a LoRA run, the
adapter as a version of its own (`<model name>-lora`, lifecycle.artifact=adapter), which `lifecycle promote`
hot-loads onto a deployment serving its base weights. The adapter carries the same run's gate evidence; its own
held-out quality is the chain check's adapter link, recorded in its tags and description.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lifecycle import manifest
from lifecycle.errors import StageError
from lifecycle.gate.report import render_markdown
from lifecycle.pool import pins
from lifecycle.provenance import library_versions
from lifecycle.registry.models import ADAPTER_ARTIFACT, SERVED_ARTIFACT, Registry, VersionRecord
from lifecycle.results import ChainReport, GateResult, QuantizeResult, RegisteredVersion, TrainResult
from lifecycle.runner import OpenRun
from lifecycle.runs import RunDir

STAGE = "register"
ADAPTER_SUFFIX = "-lora"


def adapter_model_name(model_name: str) -> str:
    """The registered model holding a LoRA run's adapters."""
    return model_name + ADAPTER_SUFFIX


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
        recipe = run.recipe
        chain = run.dir.load("chain", ChainReport) if run.dir.has("chain") else None
        adapter_dir = Path(trained.adapter_dir) if trained.adapter_dir and _checked_adapter(chain) else None
        # the adapter uploaded is exactly the one the chain check served
        adapter_digest = manifest.verify(adapter_dir).digest if adapter_dir is not None else None
        tags = lineage_tags(run.dir, trained, quantized, gate, self.engine())
        tags["lifecycle.git_commit"] = self.git_commit
        tags[pins.ARTIFACT] = "model"
        if recipe.data.residency is not None:
            tags[pins.RESIDENCY] = recipe.data.residency
        description = describe(recipe.name, recipe.description, trained, quantized, gate)
        mlflow_run = run.info.mlflow_run_id
        alias = recipe.registry.alias
        record = self._register(recipe.registry.model_name, mlflow_run, served, tags, description, alias)
        adapter = None
        if adapter_dir is not None and adapter_digest is not None and chain is not None:
            a_tags = adapter_tags(tags, adapter_digest, record, chain)
            a_record = self._register(
                adapter_model_name(recipe.registry.model_name),
                mlflow_run,
                adapter_dir,
                a_tags,
                describe_adapter(recipe.name, trained, gate, chain, record),
                alias,
                ADAPTER_ARTIFACT,
            )
            adapter = _result(a_record, alias, mlflow_run, a_tags)
        return _result(record, alias, mlflow_run, tags, adapter)

    def _register(
        self,
        name: str,
        mlflow_run: str,
        folder: Path,
        tags: dict[str, str],
        description: str,
        alias: str,
        artifact_path: str = SERVED_ARTIFACT,
    ) -> VersionRecord:
        """Register `folder` as a version of `name`; a version this MLflow run already registered with the same
        weights (a register stage that stopped part way) is reused, not registered twice."""
        for earlier in self.registry.versions(name):
            if earlier.run_id == mlflow_run and earlier.tags.get(pins.DIGEST) == tags[pins.DIGEST]:
                self.registry.set_alias(name, alias, earlier.version)
                return earlier
        return self.registry.register(name, mlflow_run, folder, tags, description, alias, artifact_path)

    def reuse(self, run: OpenRun, done: RegisteredVersion) -> RegisteredVersion:
        return done

    def record(self, run: OpenRun, result: RegisteredVersion) -> None:
        assert run.tracker is not None and run.mlflow_run_id is not None
        tags = {"lifecycle.registered": f"{result.name} v{result.version}"}
        if result.adapter is not None:
            tags["lifecycle.registered.adapter"] = f"{result.adapter.name} v{result.adapter.version}"
        run.tracker.set_tags(run.mlflow_run_id, tags)


def _result(
    record: VersionRecord,
    alias: str,
    mlflow_run: str,
    tags: dict[str, str],
    adapter: RegisteredVersion | None = None,
) -> RegisteredVersion:
    return RegisteredVersion(
        name=record.name,
        version=record.version,
        alias=alias,
        source=record.source,
        mlflow_run_id=mlflow_run,
        tags=tags,
        adapter=adapter,
    )


def _checked_adapter(chain: ChainReport | None) -> bool:
    """An adapter is registered only when the chain check compared it with the merged model and passed."""
    return (
        chain is not None
        and chain.passed
        and any((p.left, p.right) == ("adapter", "merged") for p in chain.pairs)
    )


def adapter_tags(
    model_tags: dict[str, str], adapter_digest: str, model: VersionRecord, chain: ChainReport
) -> dict[str, str]:
    """The adapter version's tags: the model version's lineage and gate evidence (the same run), its own
    weights digest, no quantization (an adapter is served as trained), and the chain check's measurements of
    it (pure)."""
    tags = {k: v for k, v in model_tags.items() if not k.startswith("lifecycle.quant.")}
    tags[pins.DIGEST] = adapter_digest
    tags[pins.ARTIFACT] = "adapter"
    tags[pins.ADAPTER_OF] = f"{model.name} v{model.version}"
    accuracy = chain.accuracy.get("adapter")
    if accuracy is not None:
        tags[pins.ADAPTER_ACCURACY] = f"{accuracy:.4g}"
    pair = next(p for p in chain.pairs if (p.left, p.right) == ("adapter", "merged"))
    tags[pins.ADAPTER_AGREEMENT] = f"{pair.agreement:.4g} (n={pair.n})"
    return tags


def describe_adapter(
    name: str, trained: TrainResult, gate: GateResult, chain: ChainReport, model: VersionRecord
) -> str:
    """The adapter version's description: what it rides on, its own measured quality, whose gate it carries."""
    pair = next(p for p in chain.pairs if (p.left, p.right) == ("adapter", "merged"))
    accuracy = chain.accuracy.get("adapter")
    base_accuracy = chain.accuracy.get("base")
    lines = [
        f"**{name}** LoRA adapter ({trained.method}), served hot-loaded on a deployment of its base weights",
        "",
        f"- trained on `{Path(trained.base_model_dir).name}` (weights {trained.base_manifest_digest[:12]}), "
        f"{trained.steps} steps",
        "- held-out quality, measured by the chain check's adapter link (base + this adapter through the "
        f"serving engine): exact match {_num(accuracy)} (base alone: {_num(base_accuracy)}); the merged model "
        f"agrees with it on {pair.agreement:.0%} of {pair.n} prompts",
        f"- gate evidence: the gate measured the merged, quantized model of the same run, {model.name} "
        f"v{model.version}; its verdict (below) carries over to the adapter through that agreement",
        f"- baseline: {gate.baseline.kind}" + (f" v{gate.baseline.version}" if gate.baseline.version else ""),
        "",
        render_markdown(gate.verdict),
    ]
    return "\n".join(lines)


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
