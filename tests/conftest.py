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
def api(lifecycle_home: Path, serve_python: Path):  # type: ignore[no-untyped-def]
    """The platform's Python API over the session's private store, serving with the real vLLM."""
    from lifecycle.api import Lifecycle
    from lifecycle.settings import load_settings

    env = {"LIFECYCLE_HOME": str(lifecycle_home), "LIFECYCLE_SERVE_PYTHON": str(serve_python)}
    return Lifecycle(load_settings(env, cwd=REPO), project_dir=REPO)


@pytest.fixture(scope="session")
def prepared_run(api):  # type: ignore[no-untyped-def]
    """Factory: a prepared (not yet trained) run of recipes/demo.yaml with overrides, its scheme resolved on
    this host's engine (probed once, cached), as `lifecycle train` prepares it."""

    def make(name: str, overrides: list[str]):  # type: ignore[no-untyped-def]
        return api.prepare(REPO / "recipes" / "demo.yaml", [f"name={name}", *overrides])

    return make


def _train(prepared_run, api, name: str, overrides: list[str]):  # type: ignore[no-untyped-def]
    run = prepared_run(name, overrides)
    api.train(run)
    return run


@pytest.fixture(scope="session")
def lora_run(prepared_run, api):  # type: ignore[no-untyped-def]
    """A finished LoRA fine-tune of the tiny model (shared by train, quantize, chain and gate tests)."""
    return _train(prepared_run, api, "lora", FAST)


@pytest.fixture(scope="session")
def full_run(prepared_run, api):  # type: ignore[no-untyped-def]
    """A finished full fine-tune of the tiny model."""
    return _train(prepared_run, api, "full", [*FAST, "method={kind: full}", "training.learning_rate=3e-4"])


@pytest.fixture(scope="session")
def serve_python() -> Path:
    python = REPO / ".venv-serve" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"the serving environment is missing ({python}): run `make setup`")
    return python


@pytest.fixture(scope="session")
def serve_factory(api):  # type: ignore[no-untyped-def]
    """What the API hands the stages: serve_factory(workdir)(model_dir, loras) starts a vLLM server from the
    serving environment, logs under workdir, and stops it on exit."""
    return api.serve
