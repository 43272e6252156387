"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="session")
def tiny_base() -> Path:
    """The built-in tiny Llama, built once (~30 s) into the cache the CLI uses, reused across test runs."""
    from lifecycle.train.tiny_base import build_tiny_llama

    return build_tiny_llama(REPO / "mlruns" / "cache" / "base-models")


@pytest.fixture(scope="session")
def lifecycle_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private store for the session (MLflow sqlite, run directories); the base-model cache is shared."""
    home = tmp_path_factory.mktemp("lifecycle-home")
    (home / "cache").symlink_to(REPO / "mlruns" / "cache", target_is_directory=True)
    return home


# Short, CPU-sized versions of the demo recipe: the same code paths, fewer steps.
FAST = ["training.max_steps=200", "training.checkpoint_every=100"]


@pytest.fixture(scope="session")
def prepared_run(lifecycle_home: Path, tiny_base: Path, serve_python: Path):  # type: ignore[no-untyped-def]
    """Factory: a prepared (not yet trained) run of recipes/demo.yaml with overrides, its scheme resolved."""
    from lifecycle.preflight import resolve_target
    from lifecycle.quantize.target import STAGE as TARGET
    from lifecycle.recipe.load import load_recipe
    from lifecycle.registry.tracking import Tracker
    from lifecycle.train import stage as train_stage

    tracker = Tracker(f"sqlite:///{lifecycle_home / 'mlflow.db'}", lifecycle_home / "artifacts")

    def make(name: str, overrides: list[str]):  # type: ignore[no-untyped-def]
        loaded = load_recipe(REPO / "recipes" / "demo.yaml", [f"name={name}", *overrides])
        run = train_stage.prepare(loaded, lifecycle_home / "runs", tracker, REPO)
        # what `lifecycle train` does next: the scheme on this host's engine (probed once, cached)
        target = resolve_target(loaded, serve_python=serve_python, cache_dir=lifecycle_home / "cache")
        run.save(TARGET, target)
        return run

    return make


def _train(prepared_run, lifecycle_home: Path, name: str, overrides: list[str]):  # type: ignore[no-untyped-def]
    from lifecycle.registry.tracking import Tracker
    from lifecycle.train import stage as train_stage

    run = prepared_run(name, overrides)
    tracker = Tracker(f"sqlite:///{lifecycle_home / 'mlflow.db'}", lifecycle_home / "artifacts")
    train_stage.run(run, train_stage.LocalLauncher(cache_dir=lifecycle_home / "cache"), tracker)
    return run


@pytest.fixture(scope="session")
def lora_run(prepared_run, lifecycle_home: Path):  # type: ignore[no-untyped-def]
    """A finished LoRA fine-tune of the tiny model (shared by train, quantize, chain and gate tests)."""
    return _train(prepared_run, lifecycle_home, "lora", FAST)


@pytest.fixture(scope="session")
def full_run(prepared_run, lifecycle_home: Path):  # type: ignore[no-untyped-def]
    """A finished full fine-tune of the tiny model."""
    return _train(
        prepared_run, lifecycle_home, "full", [*FAST, "method={kind: full}", "training.learning_rate=3e-4"]
    )


@pytest.fixture(scope="session")
def serve_python() -> Path:
    python = REPO / ".venv-serve" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"the serving environment is missing ({python}): run `make setup`")
    return python


@pytest.fixture(scope="session")
def serve_factory(serve_python: Path):  # type: ignore[no-untyped-def]
    """What the CLI hands the stages: start a vLLM server from the serving environment, stop it on exit."""
    from lifecycle.cli.context import Context
    from lifecycle.settings import load_settings

    settings = load_settings({"LIFECYCLE_SERVE_PYTHON": str(serve_python)}, cwd=REPO)
    return Context(settings=settings, project_dir=REPO).serve_factory
