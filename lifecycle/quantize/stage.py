"""The quantize stage: the weights that will be served, produced reproducibly from the verified merged model.

Records the scheme, the full quantization config and its hash, the calibration sample ids, the time taken and
the size before/after, in the run directory and on the MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from pathlib import Path
from typing import cast

from lifecycle import manifest
from lifecycle.errors import StageError
from lifecycle.quantize.chain import STAGE as CHAIN
from lifecycle.quantize.chain import ChainReport, Serve, render_markdown, run_chain
from lifecycle.quantize.target import STAGE as TARGET
from lifecycle.quantize.target import ServeTarget
from lifecycle.recipe.load import load_recipe
from lifecycle.recipe.schema import ConcreteScheme, Recipe
from lifecycle.registry.tracking import Tracker
from lifecycle.runs import Frozen, RunDir
from lifecycle.train.data import Example, load_examples

STAGE = "quantize"


class QuantizeResult(Frozen):
    model_dir: str  # the artifact that will be served (compressed-tensors), or the merged model for 'none'
    manifest_digest: str
    scheme: str
    quantization_config: dict[str, object]
    config_sha256: str
    calibration_ids: list[str]
    source_dir: str
    source_manifest_digest: str
    bytes_before: int
    bytes_after: int
    wall_s: float


def calibration_sample(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A seeded sample of the training rows, so a rerun calibrates on exactly the same data."""
    if n >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    return rng.sample(examples, n)


def calibration_text(example: Example, tokenizer: object) -> str:
    """The whole training row as the model sees it (prompt and answer)."""
    if example.prompt_messages is not None:
        messages = [*example.prompt_messages, {"role": "assistant", "content": example.target or ""}]
        return str(tokenizer.apply_chat_template(messages, tokenize=False))  # type: ignore[attr-defined]
    if example.prompt_text is not None:
        return example.prompt_text + (example.target or "")
    return str(example.sft.get("text", ""))


def config_hash(config: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def run(run_dir: RunDir, tracker: Tracker | None) -> QuantizeResult:
    """Quantize the run's verified merged model; reuses a finished result whose artifact still verifies."""
    from lifecycle.train.stage import require_trained

    if run_dir.has(STAGE):
        done = run_dir.load(STAGE, QuantizeResult)
        manifest.verify(Path(done.model_dir))
        return done
    trained = require_trained(run_dir)
    recipe = load_recipe(run_dir.recipe_path).recipe
    return _quantize(run_dir, recipe, concrete_scheme(run_dir, recipe), Path(trained.model_dir), tracker)


def concrete_scheme(run_dir: RunDir, recipe: Recipe) -> ConcreteScheme:
    """The scheme resolved for this run before training (results/target.json), or the recipe's named one."""
    if run_dir.has(TARGET):
        return cast(ConcreteScheme, run_dir.load(TARGET, ServeTarget).scheme)
    if recipe.quantize.scheme == "FP8":
        raise StageError(
            f"{run_dir.path}: quantize.scheme 'FP8' was never resolved for this run (no results/{TARGET}.json): "
            "continue it with `lifecycle train --run-dir RUN`, which resolves it on the serving target first"
        )
    return cast(ConcreteScheme, recipe.quantize.scheme)


def _quantize(
    run_dir: RunDir, recipe: Recipe, scheme: ConcreteScheme, source: Path, tracker: Tracker | None
) -> QuantizeResult:
    spec = recipe.quantize
    source_digest = manifest.verify(source).digest
    out = run_dir.stage_dir(STAGE) / "model"
    start = time.monotonic()
    calibration: list[Example] = []
    if scheme == "none":
        served = source
    else:
        from transformers import AutoTokenizer

        from lifecycle.quantize import llmc

        texts = None
        if llmc.needs_calibration(scheme):
            rows = load_examples(recipe.data.train, recipe.data.format)
            calibration = calibration_sample(rows, spec.calibration_samples, recipe.training.seed)
            tokenizer = AutoTokenizer.from_pretrained(source)
            texts = [calibration_text(e, tokenizer) for e in calibration]
        tmp = out.with_name("model.tmp")
        try:
            log = run_dir.stage_dir(STAGE) / "llmcompressor.log"
            llmc.quantize(source, tmp, scheme, spec.ignore, texts, recipe.training.max_length, log)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StageError(
                f"quantizing {source} with scheme {scheme} failed: {type(exc).__name__}: {exc}"
            ) from exc
        manifest.write(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        served = out
    wall = time.monotonic() - start
    config = json.loads((served / "config.json").read_text()).get("quantization_config", {})
    built = manifest.verify(served)
    result = QuantizeResult(
        model_dir=str(served.resolve()),
        manifest_digest=built.digest,
        scheme=scheme,
        quantization_config=config,
        config_sha256=config_hash(config),
        calibration_ids=[e.id for e in calibration],
        source_dir=str(source),
        source_manifest_digest=source_digest,
        bytes_before=manifest.read(source).total_bytes,
        bytes_after=built.total_bytes,
        wall_s=wall,
    )
    run_dir.save(STAGE, result)
    if tracker is not None:
        _record(tracker, run_dir, result)
    return result


def _record(tracker: Tracker, run_dir: RunDir, result: QuantizeResult) -> None:
    mlflow_run = run_dir.info().mlflow_run_id
    if mlflow_run is None:
        return
    tracker.set_tags(
        mlflow_run,
        {
            "lifecycle.quant.scheme": result.scheme,
            "lifecycle.quant.config_sha256": result.config_sha256,
            "lifecycle.quant.manifest_digest": result.manifest_digest,
        },
    )
    tracker.log_metrics(
        mlflow_run,
        [
            ("quantize.wall_s", result.wall_s, 0),
            ("quantize.bytes_before", result.bytes_before, 0),
            ("quantize.bytes_after", result.bytes_after, 0),
            ("quantize.size_ratio", result.bytes_after / max(result.bytes_before, 1), 0),
        ],
    )
    tracker.log_text(mlflow_run, json.dumps(result.model_dump(mode="json"), indent=2), "quantize/result.json")


def chain_prompts(recipe: Recipe, tokenizer_dir: Path, n: int) -> list[str]:
    """The first `n` eval prompts (train prompts if there is no eval split), as the served model receives them."""
    from transformers import AutoTokenizer

    from lifecycle.train.accuracy import prompt_text

    source = recipe.data.eval or recipe.data.train
    examples = [e for e in load_examples(source, recipe.data.format)][:n]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return [prompt_text(tokenizer, e) for e in examples]


def run_chain_check(run_dir: RunDir, serve: Serve, tracker: Tracker | None) -> ChainReport:
    """Compare base+adapter, merged and quantized through the serving engine; fail on a merge bug."""
    from lifecycle.train.stage import require_trained

    if run_dir.has(CHAIN):
        report = run_dir.load(CHAIN, ChainReport)
    else:
        trained = require_trained(run_dir)
        quantized = run_dir.load(STAGE, QuantizeResult)
        recipe = load_recipe(run_dir.recipe_path).recipe
        merged = Path(trained.model_dir)
        prompts = chain_prompts(recipe, merged, recipe.quantize.chain_check.prompts)
        report = run_chain(
            prompts,
            recipe.quantize.chain_check,
            serve=serve,
            base_dir=Path(trained.base_model_dir),
            adapter_dir=Path(trained.adapter_dir) if trained.adapter_dir else None,
            merged_dir=merged,
            quantized_dir=Path(quantized.model_dir) if quantized.scheme != "none" else None,
        )
        run_dir.save(CHAIN, report)
        out = run_dir.stage_dir(CHAIN)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(render_markdown(report))
        mlflow_run = run_dir.info().mlflow_run_id
        if tracker is not None and mlflow_run is not None:
            tracker.log_text(mlflow_run, render_markdown(report), "chain/report.md")
            tracker.log_metrics(
                mlflow_run,
                [(f"chain.{p.right}_vs_{p.left}.agreement", p.agreement, 0) for p in report.pairs]
                + [
                    (f"chain.{p.right}_vs_{p.left}.mean_logprob_drift", p.mean_abs_logprob_drift, 0)
                    for p in report.pairs
                ],
            )
    if not report.passed:
        raise StageError("chain check failed:\n  " + "\n  ".join(report.problems))
    return report
