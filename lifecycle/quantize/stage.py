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
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from lifecycle import manifest
from lifecycle.errors import StageError
from lifecycle.quantize.target import STAGE as TARGET
from lifecycle.quantize.target import ServeTarget
from lifecycle.recipe.schema import ConcreteScheme, Recipe
from lifecycle.registry.tracking import Tracker
from lifecycle.results import QuantizeResult
from lifecycle.runner import OpenRun
from lifecycle.runs import RunDir
from lifecycle.train.data import Example, load_examples

STAGE = "quantize"


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


@dataclass(frozen=True)
class Quantize:
    """Quantize the run's verified merged model into the artifact that will be served."""

    name: str = STAGE
    result: type[QuantizeResult] = QuantizeResult

    def compute(self, run: OpenRun) -> QuantizeResult:
        from lifecycle.train.stage import require_trained

        trained = require_trained(run.dir)
        scheme = concrete_scheme(run.dir, run.recipe)
        return _quantize(run.dir, run.recipe, scheme, Path(trained.model_dir))

    def reuse(self, run: OpenRun, done: QuantizeResult) -> QuantizeResult:
        manifest.verify(Path(done.model_dir))  # what will be gated and served is what was quantized
        return done

    def record(self, run: OpenRun, result: QuantizeResult) -> None:
        assert run.tracker is not None and run.mlflow_run_id is not None
        _record(run.tracker, run.mlflow_run_id, result)


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


def _quantize(run_dir: RunDir, recipe: Recipe, scheme: ConcreteScheme, source: Path) -> QuantizeResult:
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
    return QuantizeResult(
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


def _record(tracker: Tracker, mlflow_run: str, result: QuantizeResult) -> None:
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
