"""The platform from Python: what the `lifecycle` commands do, as calls that return typed results.

    from lifecycle.api import Lifecycle

    lc = Lifecycle()                                   # settings from the environment, as the CLI reads them
    run = lc.prepare("recipes/demo.yaml", ["training.max_steps=120"])
    outcome = lc.run(run)                              # train, quantize, chain check, gate, register
    print(outcome.gate.passed, outcome.registered)
    lc.gate("demo-tickets-20261202-101500-a1b2c3")     # any stage of any run again, by id, folder or 'latest'

Every stage goes through `runner.run_stage` (skip if done, compute, save, record) inside one `runner.session`
per call (the MLflow run ends once, however the call ends). The pipeline is the list `Lifecycle.stages`. A
notebook, an Airflow task or the promotion code uses this module; the CLI only parses, calls it and renders.
Importing it loads no torch, lm-eval or MLflow: they load when a stage needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle.recipe.load import LoadedRecipe, load_recipe
from lifecycle.results import (
    ChainReport,
    GateResult,
    QuantizeResult,
    RegisteredVersion,
    ServeTarget,
    TrainResult,
)
from lifecycle.runner import OpenRun, Stage, run_stage, session
from lifecycle.runs import RunDir, resolve_run
from lifecycle.settings import Settings, load_settings

if TYPE_CHECKING:
    from lifecycle.engines.base import CompletionEngine
    from lifecycle.measure import Serve
    from lifecycle.preflight import Checked
    from lifecycle.registry.models import Registry
    from lifecycle.registry.tracking import Tracker
    from lifecycle.train.stage import Launcher

log = logging.getLogger(__name__)

RunRef = str | Path | RunDir  # a run id, a run folder, 'latest', or an open RunDir
Say = Callable[[str], None]
# Told when a stage starts (name, None) and when it has its result (name, result): the CLI's progress lines.
OnStage = Callable[[str, Any], None]


@dataclass(frozen=True)
class Outcome:
    """Every stage's result of one run; `registered` is None when the gate failed."""

    run: RunDir
    train: TrainResult
    quantize: QuantizeResult
    chain: ChainReport
    gate: GateResult
    registered: RegisteredVersion | None


class Lifecycle:
    """The stages of the platform over one store (MLflow, run directories, caches), as set by `settings`.

    `serve` (how a stage starts a model server) and `launcher` (how training runs) default to vLLM from the
    serving environment and to the recipe's `launch`; tests pass a fake engine, other tools their own launcher.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        project_dir: Path | None = None,
        say: Say | None = None,
        serve: Serve | None = None,
        launcher: Callable[[LoadedRecipe], Launcher] | None = None,
    ):
        self.settings = settings or load_settings()
        self.project_dir = project_dir or Path.cwd()
        self.say: Say = say or log.info
        self._serve = serve
        self._launcher = launcher

    # the outside world, built on first use ----------------------------------------------------------------
    @cached_property
    def tracker(self) -> Tracker:
        from lifecycle.preflight import check_tracking_store
        from lifecycle.registry.tracking import Tracker

        check_tracking_store(self.settings.tracking_uri)  # seconds, not the client's minutes of retries
        return Tracker(self.settings.tracking_uri, self.settings.artifacts_dir)

    @cached_property
    def registry(self) -> Registry:
        from lifecycle.registry.models import Registry

        return Registry(self.tracker)

    @property
    def evals_dir(self) -> Path:
        return self.project_dir / "evals"

    def serve(self, workdir: Path) -> Serve:
        """How stages start a model server: vLLM from the serving environment, logs under `workdir`."""
        if self._serve is not None:
            return self._serve
        from lifecycle.engines.vllm import VllmSpec
        from lifecycle.engines.vllm_server import serve

        python = self.settings.serve_python

        def start(model_dir: Path, loras: dict[str, Path]) -> AbstractContextManager[CompletionEngine]:
            spec = VllmSpec(
                model_dir=model_dir.resolve(), lora_modules={k: v.resolve() for k, v in loras.items()}
            )
            return serve(spec, python=python, workdir=workdir)

        return start

    def launcher(self, loaded: LoadedRecipe) -> Launcher:
        if self._launcher is not None:
            return self._launcher(loaded)
        from lifecycle.train.stage import LocalLauncher

        if loaded.recipe.launch.kind == "sky":
            from rich.console import Console

            from lifecycle.launch.sky_launch import SkyLauncher

            return SkyLauncher.from_settings(
                self.settings,
                Console(stderr=True),
                secrets={"HF_TOKEN": self.settings.hf_token} if self.settings.hf_token else {},
                expected_hours=loaded.recipe.launch.expected_hours,
            )
        return LocalLauncher(cache_dir=self.settings.cache_dir)

    def find_production(self, name: str, target: Path) -> tuple[str, Path] | None:
        """The version aliased 'production' for `name`, downloaded into `target`; None if there is none."""
        found = self.registry.by_alias(name, "production")
        if found is None:
            return None
        return found.version, self.registry.download(name, "production", target)

    def engine_version(self) -> str:
        from lifecycle.engines.vllm import engine_version

        return engine_version(self.settings.serve_python)

    # runs -----------------------------------------------------------------------------------------------
    def load(self, recipe: str | Path, overrides: Sequence[str] = ()) -> LoadedRecipe:
        """Read and validate a recipe (RecipeError names FILE:LINE: field for every problem)."""
        return load_recipe(Path(recipe), list(overrides))

    def preflight(self, loaded: LoadedRecipe) -> Checked:
        """Every check that can fail before training starts: data, gate tasks, base model, scheme on target."""
        from lifecycle import preflight

        return preflight.check(
            loaded,
            evals_dir=self.evals_dir,
            serve_python=self.settings.serve_python,
            cache_dir=self.settings.cache_dir,
            say=self.say,
        )

    def prepare(self, recipe: str | Path | LoadedRecipe, overrides: Sequence[str] = ()) -> RunDir:
        """Check everything, then create the run: its folder, its data, its MLflow run, its resolved scheme."""
        from lifecycle.train.stage import prepare

        loaded = recipe if isinstance(recipe, LoadedRecipe) else self.load(recipe, overrides)
        checked = self.preflight(loaded)
        self.tracker  # noqa: B018  the store answers before anything is written
        run = prepare(loaded, self.settings.runs_dir, self.tracker, self.project_dir)
        self.keep_target(run, checked.target)
        return run

    def keep_target(self, run: RunDir, target: ServeTarget) -> None:
        """Record the resolved scheme in the run and on its MLflow run, and say it."""
        from lifecycle.quantize.target import STAGE as TARGET

        run.save(TARGET, target)
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
        self.say(f"quantize.scheme: {target.reason}")

    def ensure_target(self, run: RunDir) -> None:
        """A run made before the scheme was resolved at prepare time gets it now."""
        from lifecycle import preflight
        from lifecycle.quantize.target import STAGE as TARGET

        if not run.has(TARGET):
            loaded = load_recipe(run.recipe_path)
            target = preflight.resolve_target(
                loaded,
                serve_python=self.settings.serve_python,
                cache_dir=self.settings.cache_dir,
                say=self.say,
            )
            self.keep_target(run, target)

    def open(self, run: RunRef) -> RunDir:
        return run if isinstance(run, RunDir) else resolve_run(self.settings.runs_dir, str(run))

    # the stages -----------------------------------------------------------------------------------------
    def stages(self, run: RunDir) -> list[Stage[Any]]:
        """The pipeline, in order. The chain check also asks the gate's questions of the servers it starts, so
        each artifact is served once per run."""
        from lifecycle.gate.stage import Gate
        from lifecycle.provenance import git_commit
        from lifecycle.quantize.chain import ChainCheck
        from lifecycle.quantize.stage import Quantize
        from lifecycle.registry.stage import Register
        from lifecycle.train.stage import Train

        loaded = load_recipe(run.recipe_path)
        serve = self.serve(run.path / "engines")
        gate = Gate(serve, self.evals_dir, self.find_production)
        return [
            Train(self.launcher(loaded)),
            Quantize(),
            ChainCheck(serve, gate=gate.needs),
            gate,
            Register(self.registry, git_commit(self.project_dir), self.engine_version),
        ]

    def run(self, run: RunRef, on_stage: OnStage | None = None) -> Outcome:
        """Every stage in order, skipping those already done; stops after the gate when it fails."""
        run_dir = self.open(run)
        tell = on_stage or (lambda name, result: None)
        from lifecycle.quantize.chain import require_passed

        results: dict[str, Any] = {}
        with session(run_dir, self.tracker):
            opened = OpenRun.open(run_dir, self.tracker)
            for stage in self.stages(run_dir):
                if stage.name == "register" and not results["gate"].passed:
                    break
                tell(stage.name, None)
                results[stage.name] = run_stage(stage, opened)
                if stage.name == "chain":
                    require_passed(results["chain"])
                tell(stage.name, results[stage.name])
        return Outcome(
            run=run_dir,
            train=results["train"],
            quantize=results["quantize"],
            chain=results["chain"],
            gate=results["gate"],
            registered=results.get("register"),
        )

    def train(self, run: RunRef) -> TrainResult:
        return self._one(run, "train")

    def quantize(self, run: RunRef) -> QuantizeResult:
        return self._one(run, "quantize")

    def check(self, run: RunRef) -> ChainReport:
        """The chain check alone: base+adapter, merged and quantized served and compared."""
        from lifecycle.quantize.chain import require_passed

        return require_passed(self._one(run, "chain", with_gate=False))

    def gate(self, run: RunRef) -> GateResult:
        return self._one(run, "gate")

    def register(self, run: RunRef) -> RegisteredVersion:
        return self._one(run, "register")

    def _one(self, run: RunRef, name: str, *, with_gate: bool = True) -> Any:
        from lifecycle.quantize.chain import ChainCheck

        run_dir = self.open(run)
        with session(run_dir, self.tracker):
            stage = next(s for s in self.stages(run_dir) if s.name == name)
            if isinstance(stage, ChainCheck) and not with_gate:
                return run_stage(ChainCheck(stage.serve), OpenRun.open(run_dir, self.tracker))
            return run_stage(stage, OpenRun.open(run_dir, self.tracker))
