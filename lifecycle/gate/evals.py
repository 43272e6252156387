"""Render the task folders under evals/ for lm-eval: data paths made absolute, missing data found early.

The shipped task YAMLs name their data relative to their own folder (`../data/general-facts.jsonl`), which
lm-eval would resolve against the cwd. `render_evals` copies every YAML (and Python helper) to a work folder
with absolute paths and reports, per YAML, every data file that does not exist; the runner (`lmeval.py`)
reports those only for the tasks a gate names. No lm-eval import here: plain YAML, round-tripped by ruamel.
"""

from __future__ import annotations

import glob
import shutil
from pathlib import Path
from typing import Any

_GLOB_CHARS = frozenset("*?[")


def render_evals(evals_dir: Path, out: Path, datasets_cache: Path) -> dict[Path, list[str]]:
    """Copy evals/'s task YAMLs (and Python helpers) to `out` with absolute data paths; return problems.

    Relative `dataset_kwargs.data_files` (and a path-like `dataset_path`) are resolved against the YAML's own
    folder. The returned problems are keyed by the rendered YAML, so only the tasks a gate names report them.
    """
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: keeps `!function` tags, includes and comments as written
    yaml.width = 1 << 16
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    problems: dict[Path, list[str]] = {}
    if not evals_dir.is_dir():
        return problems
    for src in sorted(evals_dir.rglob("*")):
        rel = src.relative_to(evals_dir)
        if any(part.startswith((".", "__")) for part in rel.parts) or not src.is_file():
            continue
        dst = out / rel
        if src.suffix == ".py":
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif src.suffix in (".yaml", ".yml"):
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                cfg = yaml.load(src.read_text(encoding="utf-8"))
            except Exception as exc:
                problems[dst] = [f"{src} is not valid YAML: {_first_line(exc)}"]
                shutil.copy2(src, dst)
                continue
            if isinstance(cfg, dict):
                problems[dst] = _absolute_data_paths(cfg, src, datasets_cache)
            with dst.open("w", encoding="utf-8") as f:
                yaml.dump(cfg, f)
    return problems


def _absolute_data_paths(cfg: dict[str, Any], src: Path, datasets_cache: Path) -> list[str]:
    problems: list[str] = []
    base = src.parent

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            path = Path(value).expanduser()
            path = path if path.is_absolute() else (base / path).resolve()
            exists = bool(glob.glob(str(path))) if _GLOB_CHARS & set(value) else path.exists()
            if not exists:
                problems.append(f"data file {path} does not exist (named in {src} as {value!r})")
            return str(path)
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            for key in list(value):
                value[key] = fix(value[key])
            return value
        return value

    kwargs = cfg.get("dataset_kwargs")
    if isinstance(kwargs, dict) and "data_files" in kwargs:
        kwargs["data_files"] = fix(kwargs["data_files"])
        # Arrow copies of local data go to the work folder, not the user's ~/.cache/huggingface.
        kwargs.setdefault("cache_dir", str(datasets_cache))
    dataset_path = cfg.get("dataset_path")
    if isinstance(dataset_path, str) and dataset_path.startswith(("./", "../", "/", "~")):
        cfg["dataset_path"] = fix(dataset_path)
    return problems


def problems_of(yaml_path: Path | None, problems: dict[Path, list[str]], root: Path) -> list[str]:
    """Problems of a rendered YAML and of the YAMLs it includes (lm-eval's `include:`, relative to it)."""
    found: list[str] = []
    seen: set[Path] = set()
    while yaml_path is not None and yaml_path not in seen:
        seen.add(yaml_path)
        found += problems.get(yaml_path, [])
        include = _include_of(yaml_path)
        if include is None:
            break
        yaml_path = (yaml_path.parent / include).resolve()
        if root not in yaml_path.parents:
            break
    return found


def _include_of(yaml_path: Path) -> str | None:
    from ruamel.yaml import YAML

    try:
        cfg = YAML().load(yaml_path.read_text(encoding="utf-8"))
    except Exception:
        return None
    include = cfg.get("include") if isinstance(cfg, dict) else None
    return include if isinstance(include, str) else None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
