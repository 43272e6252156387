"""The training stage, seen from the user's machine: prepare the run, launch the worker, check and record it.

prepare(loaded recipe) -> RunDir        run directory with the recipe, its data and an MLflow run
run(RunDir) -> TrainResult              launch (local | sky), verify the weights, log everything to MLflow
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ruamel.yaml import YAML

from lifecycle import manifest
from lifecycle.errors import StageError, UserInputError
from lifecycle.launch.checkpoints import latest_committed
from lifecycle.provenance import git_commit, library_versions
from lifecycle.recipe.load import LoadedRecipe, data_files, load_recipe
from lifecycle.registry.tracking import Tracker, flatten
from lifecycle.results import Cost, DataStats, RunInfo, TrainResult
from lifecycle.runner import OpenRun, end_mlflow_run
from lifecycle.runs import RunDir, created_stamp, list_runs, new_run_id
from lifecycle.train.data import Example, load_examples, stats
from lifecycle.train.worker import WORKER_RESULT, WorkerResult

log = logging.getLogger(__name__)

STAGE = "train"
CLAIM_ATTEMPTS = 20  # fresh random ids; more than a couple of collisions means something else is wrong


class Launcher(Protocol):
    """Runs the training worker for a prepared run and leaves its output in `run.train_dir`."""

    @property
    def kind(self) -> str: ...

    def __call__(self, run: RunDir) -> Cost: ...


@dataclass(frozen=True)
class LocalLauncher:
    cache_dir: Path
    kind: str = "local"

    def __call__(self, run: RunDir) -> Cost:
        from lifecycle.launch.local import run_local

        run_local(run.path, run.train_dir.resolve(), self.cache_dir)
        return Cost(source="local")


def unfinished_runs(runs_dir: Path, recipe_name: str) -> list[RunDir]:
    """Runs of this recipe, newest first, that have not finished training or were interrupted later."""
    found = []
    for run in list_runs(runs_dir):
        if run.info().recipe_name != recipe_name:
            continue
        stopped = run.stopped()
        if not run.has(STAGE) or (stopped is not None and stopped.reason == "interrupted"):
            found.append(run)
    return found


def find_resumable(runs_dir: Path, loaded: LoadedRecipe) -> RunDir | None:
    """The newest unfinished run started from this very recipe: same file content and the same overrides (in a
    sweep, `--resume` must continue the run with these settings, not the newest of the recipe's runs)."""
    for run in unfinished_runs(runs_dir, loaded.recipe.name):
        info = run.info()
        if info.recipe_sha256 == loaded.sha256 and tuple(info.overrides) == tuple(loaded.overrides):
            return run
    return None


def prepare(loaded: LoadedRecipe, runs_dir: Path, tracker: Tracker, project_dir: Path) -> RunDir:
    """Create a self-contained run directory and its MLflow run. Checks every data row first: a bad row
    stops here, before anything is written. Safe to call from several processes at once (a sweep): each gets
    its own run id and folder. If it fails or is stopped, the MLflow run ends (FAILED or KILLED) and the
    half-written folder goes."""
    recipe = loaded.recipe
    examples = {
        split: load_examples(path, recipe.data.format) for split, path in data_files(recipe.data).items()
    }
    now = dt.datetime.now()
    mlflow_run: str | None = None
    tmp, run_id = _claim_run_dir(runs_dir, recipe.name, now)
    run = RunDir(runs_dir / run_id)
    try:
        data_stats = _write_run_files(loaded, tmp, examples)
        mlflow_run = tracker.start_run(recipe.name, run_id, _run_tags(loaded, run, project_dir))
        _log_run_inputs(tracker, mlflow_run, loaded, tmp, data_stats)
        tmp.write_info(
            RunInfo(
                run_id=run_id,
                recipe_name=recipe.name,
                recipe_sha256=loaded.sha256,
                created=created_stamp(now),
                mlflow_run_id=mlflow_run,
                overrides=loaded.overrides,
            )
        )
        tmp.path.rename(run.path)  # the run exists only once complete
    except BaseException as exc:
        shutil.rmtree(tmp.path, ignore_errors=True)
        # as in runner.session: a stop (Ctrl-C, a signal: not an Exception) is KILLED, an error FAILED
        if mlflow_run is not None:
            end_mlflow_run(tracker, mlflow_run, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    return run


def _write_run_files(
    loaded: LoadedRecipe, tmp: RunDir, examples: dict[str, list[Example]]
) -> dict[str, DataStats]:
    """Copy the data (train, eval and each `data.mix` source) and the recipe into the claimed, empty run folder,
    so the folder alone can train anywhere; returns the data's statistics, keyed train, eval, mix.0, ..."""
    recipe = loaded.recipe
    tmp.data_dir.mkdir()
    local_paths: dict[str, str] = {}
    files = data_files(recipe.data)
    for split, path in files.items():
        shutil.copy2(path, tmp.data_dir / f"{split}.jsonl")
        local_paths[split] = f"data/{split}.jsonl"
    mix_paths = []
    if recipe.data.mix:
        (tmp.data_dir / "mix").mkdir()
    for i, source in enumerate(recipe.data.mix):
        local = f"data/mix/{i}-{source.path.stem}.jsonl"
        shutil.copy2(source.path, tmp.path / local)
        mix_paths.append(local)
        files[f"mix.{i}"] = source.path
        examples[f"mix.{i}"] = load_examples(source.path, source.format)
    _write_run_recipe(loaded, tmp.recipe_path, local_paths, mix_paths)
    (tmp.path / "recipe.source.yaml").write_text(loaded.text)
    load_recipe(tmp.recipe_path)  # the copy must validate exactly like the original
    data_stats = {split: stats(path, examples[split]) for split, path in files.items()}
    manifest.write_json_atomic(
        tmp.path / "data_stats.json", {k: v.model_dump() for k, v in data_stats.items()}
    )
    return data_stats


def _run_tags(loaded: LoadedRecipe, run: RunDir, project_dir: Path) -> dict[str, str]:
    recipe = loaded.recipe
    return {
        "lifecycle.recipe": recipe.name,
        "lifecycle.recipe_sha256": loaded.sha256,
        "lifecycle.recipe_path": str(loaded.path),
        "lifecycle.run_dir": str(run.path.resolve()),
        "lifecycle.git_commit": git_commit(project_dir),
        "lifecycle.method": recipe.method.kind,
        "lifecycle.launch": recipe.launch.kind,
        "mlflow.source.name": "lifecycle train",
    }


def _log_run_inputs(
    tracker: Tracker, mlflow_run: str, loaded: LoadedRecipe, tmp: RunDir, data_stats: dict[str, DataStats]
) -> None:
    params = flatten(loaded.recipe.model_dump(mode="json"))
    for split, s in data_stats.items():
        params[f"data.{split}.sha256"] = s.sha256
        params[f"data.{split}.rows"] = s.rows
    params["overrides"] = list(loaded.overrides)
    tracker.log_params(mlflow_run, params)
    tracker.set_tags(mlflow_run, {f"version.{k}": v for k, v in library_versions().items()})
    tracker.log_artifact(mlflow_run, tmp.path / "recipe.source.yaml", "recipe")
    tracker.log_artifact(mlflow_run, tmp.recipe_path, "recipe")


def _claim_run_dir(runs_dir: Path, recipe_name: str, now: dt.datetime) -> tuple[RunDir, str]:
    """A new run id and its temporary folder, created by this process alone: mkdir fails when another process
    (or an earlier run) holds the name, and then we draw another id."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(CLAIM_ATTEMPTS):
        run_id = new_run_id(recipe_name, now)
        tmp = runs_dir / f".{run_id}.tmp"
        try:
            tmp.mkdir()
        except FileExistsError:
            continue
        # The final folder appears only by renaming a claimed temporary one, so once we hold `tmp` nobody else
        # can create it; it may still be there from a finished run of the same id.
        if (runs_dir / run_id).exists():
            tmp.rmdir()
            continue
        return RunDir(tmp), run_id
    raise StageError(f"{runs_dir}: could not claim a new run directory in {CLAIM_ATTEMPTS} attempts")


def _write_run_recipe(
    loaded: LoadedRecipe, target: Path, data_paths: dict[str, str], mix_paths: list[str]
) -> None:
    data = loaded.recipe.model_dump(mode="json", exclude_none=True)
    data["data"].update(data_paths)
    for source, path in zip(data["data"].get("mix", []), mix_paths, strict=True):
        source["path"] = path
    header = f"# {loaded.recipe.name}: validated copy of {loaded.path} (sha256 {loaded.sha256[:12]})\n"
    with target.open("w") as fh:
        fh.write(header)
        YAML().dump(data, fh)


@dataclass(frozen=True)
class Train:
    """Launch the worker (it resumes from its newest committed checkpoint), then verify and record the result."""

    launcher: Launcher
    name: str = STAGE
    result: type[TrainResult] = TrainResult

    def compute(self, run: OpenRun) -> TrainResult:
        resumed = latest_committed(run.dir.train_dir / "checkpoints")
        if resumed is not None and run.tracker is not None and run.mlflow_run_id is not None:
            run.tracker.set_tags(run.mlflow_run_id, {"lifecycle.resumed_from": resumed.name})
        start = time.monotonic()
        cost = self.launcher(run.dir)  # the command's runner.session ends the MLflow run, however it ends
        wall = time.monotonic() - start
        worker = _read_worker(run.dir.train_dir)
        model_dir = run.dir.train_dir / "model"
        # the weights that came home are the weights that were trained: sizes and times against the manifest
        # the worker wrote when it hashed them (a full re-hash only for files that changed since)
        digest = manifest.verify(model_dir).digest
        if digest != worker.model_manifest_digest:
            raise StageError(f"{model_dir}: manifest digest differs from the one the worker reported")
        adapter_dir = run.dir.train_dir / "adapter" if worker.adapter_manifest_digest else None
        if adapter_dir is not None:
            manifest.verify(adapter_dir)
        data_stats = json.loads((run.path / "data_stats.json").read_text())
        return TrainResult(
            model_dir=str(model_dir.resolve()),
            manifest_digest=digest,
            adapter_dir=str(adapter_dir.resolve()) if adapter_dir else None,
            base_model_dir=worker.base_model_dir,
            base_manifest_digest=worker.base_manifest_digest,
            method=run.recipe.method.kind,
            steps=worker.steps,
            resumed_from_step=worker.resumed_from_step,
            final_loss=worker.final_loss,
            eval_accuracy=worker.eval_accuracy,
            base_eval_accuracy=worker.base_eval_accuracy,
            wall_s=wall,
            data=data_stats,
            cost=cost,
            launch={"kind": self.launcher.kind, "host": worker.host, "accelerator": worker.accelerator},
        )

    def reuse(self, run: OpenRun, done: TrainResult) -> TrainResult:
        return require_trained(run.dir, done)

    def record(self, run: OpenRun, result: TrainResult) -> None:
        assert run.tracker is not None and run.mlflow_run_id is not None
        _record(run.tracker, run.mlflow_run_id, run.dir, result, _read_worker(run.dir.train_dir))


def _read_worker(output: Path) -> WorkerResult:
    path = output / WORKER_RESULT
    if not path.is_file():
        raise StageError(f"{output}: the training worker finished without writing {WORKER_RESULT}")
    return WorkerResult.model_validate_json(path.read_text())


def _record(
    tracker: Tracker, mlflow_run: str, run: RunDir, result: TrainResult, worker: WorkerResult
) -> None:
    rows: dict[tuple[str, int], float] = {}
    metrics_path = run.train_dir / "metrics.jsonl"
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            entry = json.loads(line)
            for key, value in entry.items():
                if key not in ("step", "time"):
                    rows[(f"train.{key}", int(entry["step"]))] = float(
                        value
                    )  # a resumed step's last value wins
    tracker.log_metrics(
        mlflow_run, [(k, v, s) for (k, s), v in sorted(rows.items(), key=lambda kv: kv[0][1])]
    )
    final = {
        "train.steps": result.steps,
        "train.final_loss": result.final_loss,
        "train.eval_accuracy": result.eval_accuracy,
        "train.base_eval_accuracy": result.base_eval_accuracy,
        "train.wall_s": result.wall_s,
        "train.worker_wall_s": worker.train_wall_s,
        "cost.actual_usd": result.cost.actual_usd,
        "cost.estimated_usd": result.cost.estimated_usd,
    }
    tracker.log_metrics(mlflow_run, [(k, v, result.steps) for k, v in final.items() if v is not None])
    tracker.set_tags(
        mlflow_run,
        {
            "lifecycle.model_manifest_digest": result.manifest_digest,
            "lifecycle.base_model": result.base_model_dir,
            "lifecycle.base_manifest_digest": result.base_manifest_digest,
            "lifecycle.launch.host": worker.host,
            "lifecycle.launch.accelerator": worker.accelerator,
        },
    )
    tracker.log_artifact(mlflow_run, run.train_dir / "metrics.jsonl", "train")
    tracker.log_artifact(mlflow_run, run.train_dir / WORKER_RESULT, "train")


def require_trained(run: RunDir, result: TrainResult | None = None) -> TrainResult:
    """The TrainResult of a run, its weights checked against their manifest: later stages start from here.
    Sizes and modification times are compared; only a file that changed is hashed again."""
    result = result or run.load(STAGE, TrainResult)
    if not Path(result.model_dir).is_dir():
        raise UserInputError(f"{run.path}: the trained model folder {result.model_dir} is gone")
    manifest.verify(Path(result.model_dir))
    return result
