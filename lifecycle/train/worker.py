"""The training stage's worker: what `lifecycle worker train recipe.yaml` runs, locally or on a rented node.

Reads the run's recipe and data (with its mix sources, drawn seeded), resolves the base model, trains
(resuming from the newest committed checkpoint), and writes `worker.json` beside the final model, with the
rows each data source put into training. The launcher on the user's machine turns that into a TrainResult and
records it in MLflow.

The merged model is hashed once, as the trainer writes it; its digest comes from that write. The base model's
manifest is remembered in the cache, so a base is hashed once, not once per run. Held-out accuracy by HF
`generate` (base and tuned) is measured only when asked (`accuracy=True`, or LIFECYCLE_TRAIN_ACCURACY=1 in
the worker's environment): the chain check measures both on the served models, from prompts it serves anyway.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from lifecycle import manifest
from lifecycle.recipe.load import load_recipe
from lifecycle.train.data import MixCount

WORKER_RESULT = "worker.json"
ACCURACY_ENV = "LIFECYCLE_TRAIN_ACCURACY"  # "1": measure held-out accuracy with HF generate, before and after


class Hashing(BaseModel):
    """Files the worker read in full to hash them, and how many times over that covered the merged model."""

    model_config = ConfigDict(frozen=True)
    files: int
    bytes: int
    model_times: float  # times over the merged model's weight files; 1.0: once, as they were written


class WorkerResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    base_model_dir: str
    base_manifest_digest: str
    model_manifest_digest: str
    adapter_manifest_digest: str | None
    steps: int
    resumed_from_step: int | None
    final_loss: float | None
    eval_accuracy: float | None = None  # None unless measured (see the module docstring)
    base_eval_accuracy: float | None = None
    train_wall_s: float
    host: str
    accelerator: str
    data_mix: list[MixCount] = []  # rows per source in the training list: 'train', then each data.mix source
    hashing: Hashing | None = None


def accuracy_requested(env: Mapping[str, str]) -> bool:
    """Whether the worker's environment asks for held-out accuracy by HF generate."""
    return env.get(ACCURACY_ENV, "").strip().lower() in ("1", "true", "yes")


def is_main_process(env: Mapping[str, str]) -> bool:
    """Rank 0 of a distributed job (torchrun sets RANK), or a process on its own."""
    return env.get("RANK", "0").strip() in ("", "0")


def run_worker(
    recipe_path: Path,
    output: Path,
    cache_dir: Path,
    progress: Any | None = None,
    world_size: int = 1,
    accuracy: bool | None = None,
) -> WorkerResult:
    """Train the recipe into `output`. `accuracy` None: as LIFECYCLE_TRAIN_ACCURACY says (default off).

    Run once per GPU under torchrun, the processes train together; only the main one (RANK 0) measures
    accuracy, hashes the base, writes the model and `worker.json`: the others return a result with an empty model
    digest, having loaded nothing but what training needs."""
    from lifecycle.train.base import base_manifest, resolve_base
    from lifecycle.train.data import load_examples, load_mix, mix_rows
    from lifecycle.train.trainer import Hardware, fit

    hashed_before = manifest.hash_stats()
    if accuracy is None:
        accuracy = accuracy_requested(os.environ)
    loaded = load_recipe(recipe_path)
    recipe = loaded.recipe
    output.mkdir(parents=True, exist_ok=True)
    base_dir = resolve_base(recipe.model, cache_dir)
    train = load_examples(recipe.data.train, recipe.data.format)
    mixed = mix_rows(train, load_mix(recipe.data), recipe.training.seed, str(recipe.data.train))
    evaluation = (
        load_examples(recipe.data.eval, recipe.data.format) if recipe.data.eval and accuracy else None
    )

    main = is_main_process(os.environ)
    base_acc = _base_accuracy(base_dir, evaluation, output) if evaluation and main else None
    fitted = fit(recipe, base_dir, mixed.rows, evaluation, output, Hardware.detect(world_size), progress)
    model = fitted.model_manifest
    if model is None:  # not the main process: it wrote nothing
        base_digest, tuned_acc = "", None
    else:
        base_digest = base_manifest(base_dir, cache_dir).digest
        tuned_acc = _generation_accuracy(output / "model", evaluation) if evaluation else None
    hashed = manifest.hash_stats().since(hashed_before)
    result = WorkerResult(
        base_model_dir=str(base_dir),
        base_manifest_digest=base_digest,
        model_manifest_digest=model.digest if model is not None else "",
        adapter_manifest_digest=fitted.adapter_manifest.digest if fitted.adapter_manifest else None,
        steps=fitted.steps,
        resumed_from_step=fitted.resumed_from_step,
        final_loss=fitted.final_loss,
        eval_accuracy=tuned_acc,
        base_eval_accuracy=base_acc,
        train_wall_s=fitted.wall_s,
        host=platform.node(),
        accelerator=_accelerator(),
        data_mix=mixed.counts,
        hashing=Hashing(
            files=hashed.files,
            bytes=hashed.bytes,
            model_times=hashed.times(model, manifest.WEIGHTS) if model is not None else 0.0,
        ),
    )
    if model is not None:
        manifest.write_json_atomic(output / WORKER_RESULT, result.model_dump(mode="json"))
    return result


def _base_accuracy(base_dir: Path, evaluation: list[Any], output: Path) -> float | None:
    """Measured once per run: a resumed run keeps the first measurement."""
    path = output / "base_eval.json"
    if path.is_file():
        return json.loads(path.read_text())["accuracy"]
    found = _generation_accuracy(base_dir, evaluation)
    manifest.write_json_atomic(path, {"accuracy": found})
    return found


def _generation_accuracy(model_dir: Path, evaluation: list[Any]) -> float | None:
    from lifecycle.train.accuracy import generation_accuracy

    return generation_accuracy(model_dir, evaluation)


def _accelerator() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"cpu ({platform.machine()})"
