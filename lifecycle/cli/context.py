"""What every command needs from the outside world, built once at the CLI edge from the settings."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.cli.output import console
from lifecycle.engines.base import CompletionEngine
from lifecycle.quantize.chain import Serve
from lifecycle.recipe.load import LoadedRecipe
from lifecycle.registry.tracking import Tracker

if TYPE_CHECKING:
    from lifecycle.preflight import Checked
    from lifecycle.quantize.target import ServeTarget
    from lifecycle.registry.models import Registry
from lifecycle.quantize.target import STAGE as TARGET_STAGE
from lifecycle.runs import RunDir
from lifecycle.settings import Settings, load_settings


@dataclass
class Context:
    settings: Settings
    project_dir: Path = field(default_factory=Path.cwd)

    def check_store(self) -> None:
        """Exit 2 naming the URI when the MLflow store cannot be reached: seconds, not the client's minutes of
        retries. Writes nothing."""
        from lifecycle.preflight import check_tracking_store

        check_tracking_store(self.settings.tracking_uri)

    @cached_property
    def tracker(self) -> Tracker:
        self.check_store()
        return Tracker(self.settings.tracking_uri, self.settings.artifacts_dir)

    def preflight(self, loaded: LoadedRecipe) -> Checked:
        """Every check that can fail before training starts (data, gate tasks, baseline, scheme on target)."""
        from lifecycle import preflight

        return preflight.check(
            loaded,
            evals_dir=self.evals_dir,
            serve_python=self.settings.serve_python,
            cache_dir=self.settings.cache_dir,
            say=lambda line: console.print(line, markup=False),
        )

    def resolve_target(self, loaded: LoadedRecipe) -> ServeTarget:
        from lifecycle import preflight

        return preflight.resolve_target(
            loaded,
            serve_python=self.settings.serve_python,
            cache_dir=self.settings.cache_dir,
            say=lambda line: console.print(line, markup=False),
        )

    def keep_target(self, run: RunDir, target: ServeTarget) -> None:
        """Record the resolved scheme in the run and on its MLflow run, and say it."""
        run.save(TARGET_STAGE, target)
        mlflow_run = run.info().mlflow_run_id
        if mlflow_run:
            self.tracker.set_tags(
                mlflow_run,
                {
                    "lifecycle.quant.requested": target.requested,
                    "lifecycle.quant.resolved": target.scheme,
                    "lifecycle.quant.reason": target.reason[:5000],
                    "lifecycle.serve_target": target.target,
                },
            )
        console.print(f"quantize.scheme: {target.reason}", markup=False)

    def launcher(self, loaded: LoadedRecipe) -> object:
        from lifecycle.train.stage import LocalLauncher

        if loaded.recipe.launch.kind == "sky":
            from lifecycle.launch.sky_launch import SkyLauncher

            return SkyLauncher.from_settings(
                self.settings,
                console,
                secrets=self.secrets,
                expected_hours=loaded.recipe.launch.expected_hours,
            )
        return LocalLauncher(cache_dir=self.settings.cache_dir)

    @property
    def secrets(self) -> dict[str, str]:
        return {"HF_TOKEN": self.settings.hf_token} if self.settings.hf_token else {}

    def dry_run(self, loaded: LoadedRecipe) -> None:
        from lifecycle.launch.sky_launch import dry_run
        from lifecycle.recipe.schema import SkyLaunch
        from lifecycle.runs import new_run_id

        launch = loaded.recipe.launch
        dry_run(
            loaded,
            console,
            run_dir=self.settings.runs_dir / new_run_id(loaded.recipe.name),
            secrets=self.secrets,
            expected_hours=launch.expected_hours if isinstance(launch, SkyLaunch) else None,
        )

    @cached_property
    def registry(self) -> Registry:
        from lifecycle.registry.models import Registry

        return Registry(self.tracker)

    @property
    def evals_dir(self) -> Path:
        return self.project_dir / "evals"

    def find_production(self, name: str, target: Path) -> tuple[str, Path] | None:
        """The version aliased 'production' for `name`, downloaded into `target`; None if there is none."""
        found = self.registry.by_alias(name, "production")
        if found is None:
            return None
        return found.version, self.registry.download(name, "production", target)

    def engine_version(self) -> str:
        from lifecycle.engines.vllm import engine_version

        return engine_version(self.settings.serve_python)

    def serve_factory(self, workdir: Path) -> Serve:
        """How stages start a model server: vLLM from the serving environment, logs under `workdir`."""
        from lifecycle.engines.vllm import VllmSpec, serve

        python = self.settings.serve_python

        def start(model_dir: Path, loras: dict[str, Path]) -> AbstractContextManager[CompletionEngine]:
            spec = VllmSpec(
                model_dir=model_dir.resolve(), lora_modules={k: v.resolve() for k, v in loras.items()}
            )
            return serve(spec, python=python, workdir=workdir)

        return start

    def run_pipeline(self, run: RunDir) -> bool:
        from lifecycle.pipeline import run_stages
        from lifecycle.recipe.load import load_recipe

        loaded = load_recipe(run.recipe_path)
        return run_stages(run, loaded, self, console)


def load_context() -> Context:
    # MLflow sends usage telemetry unless told not to; a platform for data-residency-bound teams turns it off
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # one progress display (ours): the libraries' per-file bars only bury the stage lines
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # the libraries' tqdm bars (loading weights, writing shards, compressing) too, here and in the worker
    os.environ.setdefault("TQDM_DISABLE", "1")
    return Context(settings=load_settings())
