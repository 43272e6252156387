"""The training stage's worker: what `lifecycle worker train recipe.yaml` runs, locally or on a rented node.

Reads the run's recipe and data (with its mix sources, drawn seeded), resolves the base model, measures base
accuracy, trains (resuming from the newest committed checkpoint), and writes `worker.json` beside the final
model, with the rows each data source put into training. The launcher on the user's machine turns that into
a TrainResult and records it in MLflow.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from lifecycle import manifest
from lifecycle.recipe.load import load_recipe
from lifecycle.recipe.schema import FullMethod
from lifecycle.train.data import MixCount

WORKER_RESULT = "worker.json"


class WorkerResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    base_model_dir: str
    base_manifest_digest: str
    model_manifest_digest: str
    adapter_manifest_digest: str | None
    steps: int
    resumed_from_step: int | None
    final_loss: float | None
    eval_accuracy: float | None
    base_eval_accuracy: float | None
    train_wall_s: float
    host: str
    accelerator: str
    data_mix: list[MixCount] = []  # rows per source in the training list: 'train', then each data.mix source


def run_worker(
    recipe_path: Path, output: Path, cache_dir: Path, progress: Any | None = None, world_size: int = 1
) -> WorkerResult:
    from lifecycle.train.accuracy import generation_accuracy
    from lifecycle.train.base import resolve_base
    from lifecycle.train.data import load_examples, load_mix, mix_rows
    from lifecycle.train.trainer import Hardware, fit

    loaded = load_recipe(recipe_path)
    recipe = loaded.recipe
    output.mkdir(parents=True, exist_ok=True)
    base_dir = resolve_base(recipe.model, cache_dir)
    train = load_examples(recipe.data.train, recipe.data.format)
    mixed = mix_rows(train, load_mix(recipe.data), recipe.training.seed, str(recipe.data.train))
    evaluation = load_examples(recipe.data.eval, recipe.data.format) if recipe.data.eval else None

    base_eval_path = output / "base_eval.json"  # measured once: a resumed run keeps the first measurement
    if base_eval_path.is_file():
        base_acc = json.loads(base_eval_path.read_text())["accuracy"]
    else:
        base_acc = generation_accuracy(base_dir, evaluation) if evaluation else None
        manifest.write_json_atomic(base_eval_path, {"accuracy": base_acc})

    hw = Hardware.detect(world_size)
    fitted = fit(recipe, base_dir, mixed.rows, evaluation, output, hw, progress)
    model_dir = output / "model"
    tuned_acc = generation_accuracy(model_dir, evaluation) if evaluation else None
    adapter = output / "adapter"
    result = WorkerResult(
        base_model_dir=str(base_dir),
        base_manifest_digest=manifest.compute(base_dir).digest,
        model_manifest_digest=manifest.verify(model_dir).digest,
        adapter_manifest_digest=None
        if isinstance(recipe.method, FullMethod)
        else manifest.verify(adapter).digest,
        steps=fitted.steps,
        resumed_from_step=fitted.resumed_from_step,
        final_loss=fitted.final_loss,
        eval_accuracy=tuned_acc,
        base_eval_accuracy=base_acc,
        train_wall_s=fitted.wall_s,
        host=platform.node(),
        accelerator=_accelerator(),
        data_mix=mixed.counts,
    )
    manifest.write_json_atomic(output / WORKER_RESULT, result.model_dump(mode="json"))
    return result


def _accelerator() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"cpu ({platform.machine()})"
