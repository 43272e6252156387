"""The spine end to end on CPU: a real trl/peft fine-tune of the tiny model, recorded in a real MLflow store.

One LoRA run and one full run are shared by the tests below (session fixtures in conftest), so the suite pays for
each fine-tune once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifecycle import manifest
from lifecycle.errors import ManifestError, RecipeError
from lifecycle.launch import checkpoints
from lifecycle.launch.command import worker_argv
from lifecycle.launch.local import child_env
from lifecycle.recipe.load import load_recipe
from lifecycle.registry.tracking import Tracker
from lifecycle.results import Cost, TrainResult
from lifecycle.runner import OpenRun, run_stage
from lifecycle.runs import RunDir
from lifecycle.train import stage as train_stage

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[2]


def _losses(run: RunDir) -> list[float]:
    rows = [json.loads(line) for line in (run.train_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_lora_learns_and_leaves_an_adapter(lora_run: RunDir) -> None:
    """Held-out accuracy is measured through the serving engine by the chain check (tests/test_pipeline.py)."""
    result = lora_run.load("train", TrainResult)
    losses = _losses(lora_run)
    assert len(losses) >= 3 and losses[-1] < 0.5 * losses[0]
    assert result.adapter_dir is not None and Path(result.adapter_dir, "adapter_config.json").is_file()


def test_full_fine_tune_learns_without_an_adapter(full_run: RunDir) -> None:
    result = full_run.load("train", TrainResult)
    assert result.adapter_dir is None and result.method == "full"
    losses = _losses(full_run)
    assert losses[-1] < 0.5 * losses[0]


def test_merged_model_keeps_the_base_dtype_and_verifies(lora_run: RunDir) -> None:
    result = lora_run.load("train", TrainResult)
    base_cfg = json.loads(Path(result.base_model_dir, "config.json").read_text())
    merged_cfg = json.loads(Path(result.model_dir, "config.json").read_text())
    assert merged_cfg["dtype"] == base_cfg["dtype"] == "bfloat16"
    assert manifest.verify(Path(result.model_dir)).digest == result.manifest_digest
    assert "lora" not in json.dumps(merged_cfg).lower()


def test_mlflow_run_holds_params_metrics_tags_and_artifacts(lora_run: RunDir, lifecycle_home: Path) -> None:
    info = lora_run.info()
    tracker = Tracker(f"sqlite:///{lifecycle_home / 'mlflow.db'}", lifecycle_home / "artifacts")
    assert info.mlflow_run_id is not None
    record = tracker.get_run(info.mlflow_run_id)
    result = lora_run.load("train", TrainResult)
    assert record.params["method.kind"] == "lora"
    assert record.params["training.learning_rate"] == str(
        load_recipe(lora_run.recipe_path).recipe.training.learning_rate
    )
    assert record.params["data.train.rows"] == "400"
    assert record.params["data.train.sha256"] == result.data["train"].sha256
    assert record.tags["lifecycle.recipe_sha256"] == info.recipe_sha256
    assert record.tags["version.trl"] and record.tags["version.peft"] and record.tags["version.transformers"]
    assert record.tags["lifecycle.git_commit"]
    assert record.tags["lifecycle.model_manifest_digest"] == result.manifest_digest
    # the replay mix: its rows, their hash, and the copy the run trains on
    assert record.params["data.mix.0.rows"] == str(result.data["mix.0"].rows)
    assert record.params["data.mix.0.sha256"] == result.data["mix.0"].sha256
    assert record.metrics["train.wall_s"] > 0
    losses = tracker.metric_history(info.mlflow_run_id, "train.loss")
    lrs = tracker.metric_history(info.mlflow_run_id, "train.learning_rate")
    assert len(losses) >= 3 and len(lrs) == len(losses)
    assert losses[-1][1] < losses[0][1]  # it learned
    assert sorted(tracker.list_artifacts(info.mlflow_run_id, "recipe")) == [
        "recipe/recipe.source.yaml",
        "recipe/recipe.yaml",
    ]


def test_run_directory_is_self_contained_and_reloads(lora_run: RunDir) -> None:
    loaded = load_recipe(lora_run.recipe_path)
    assert loaded.recipe.data.train == (lora_run.path / "data" / "train.jsonl").resolve()
    (source,) = load_recipe(REPO / "recipes" / "demo.yaml").recipe.data.mix
    (mixed,) = loaded.recipe.data.mix
    assert mixed.path.resolve().parent == (lora_run.path / "data" / "mix").resolve()
    assert mixed.path.read_bytes() == source.path.read_bytes() and mixed.weight == source.weight
    again = run_stage(train_stage.Train(_NoLaunch()), OpenRun.open(lora_run, None))
    assert again == lora_run.load("train", TrainResult)  # a finished stage is not rerun


class _NoLaunch:
    kind = "none"

    def __call__(self, run: RunDir) -> Cost:
        raise AssertionError("a finished training stage must not launch again")


def test_a_changed_weight_file_stops_later_stages(lora_run: RunDir, tmp_path: Path) -> None:
    import shutil

    copy = RunDir(tmp_path / "copy")
    shutil.copytree(lora_run.path, copy.path)
    result = lora_run.load("train", TrainResult)
    moved = result.model_copy(update={"model_dir": str(copy.train_dir / "model")})
    copy.save("train", moved)
    (copy.train_dir / "model" / "config.json").write_text("{}")
    with pytest.raises(ManifestError, match="changed: config.json"):
        train_stage.require_trained(copy)


def test_killed_run_resumes_from_its_last_committed_checkpoint(
    prepared_run,  # type: ignore[no-untyped-def]
    api,
    lifecycle_home: Path,
) -> None:
    """Kill the training process after its second commit, plant a half-written newer checkpoint, relaunch."""
    run: RunDir = prepared_run("resume", ["training.max_steps=60", "training.checkpoint_every=10"])
    ckpts = run.train_dir / "checkpoints"
    env = child_env(run.train_dir.resolve(), lifecycle_home / "cache")
    proc = subprocess.Popen(
        worker_argv(),
        cwd=run.path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        committed = checkpoints.latest_committed(ckpts, verify=False)
        if committed is not None and checkpoints.step_of(committed) >= 20:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    last = checkpoints.latest_committed(ckpts)
    assert last is not None
    step = checkpoints.step_of(last)
    # a newer checkpoint whose files were written but whose marker never was: resume must skip it
    half = ckpts / f"checkpoint-{step + 10}"
    if not half.exists():
        import shutil

        shutil.copytree(last, half)
        (half / checkpoints.COMMIT_MARKER).unlink()
    assert checkpoints.latest_committed(ckpts) == last

    result = api.train(run)
    assert result.resumed_from_step == step
    assert result.steps == 60
    logged = [json.loads(line)["step"] for line in (run.train_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) >= 60 - 5  # the relaunched process logged the steps after the checkpoint


def _tracker(home: Path) -> Tracker:
    return Tracker(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")


def test_bad_data_row_stops_before_anything_is_written(tmp_path: Path, lifecycle_home: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    recipe = Path(__file__).parents[2] / "recipes" / "demo.yaml"
    loaded = load_recipe(recipe, [f"data.train={bad}"])
    runs_dir = tmp_path / "runs"
    with pytest.raises(RecipeError) as info:
        train_stage.prepare(loaded, runs_dir, _tracker(tmp_path), Path.cwd())
    assert info.value.problems[0].startswith(f"{bad}:1: messages: the last turn must be the assistant's")
    assert info.value.problems[1] == f"{bad}:2: not valid JSON: Expecting value"
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_cli_train_with_a_bad_recipe_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    recipe = Path(__file__).parents[2] / "recipes" / "demo.yaml"
    env = {**os.environ, "LIFECYCLE_HOME": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lifecycle.cli.app",
            "train",
            str(recipe),
            "--set",
            "training.learning_rate=-1",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2
    assert "training.learning_rate" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
