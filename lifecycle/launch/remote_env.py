"""What a cloud node needs to run the worker exactly as it runs at home.

Two files go into the run directory (the task's workdir), under `sky-task/`:
- this checkout of lifecycle built as a wheel: the code that runs is the code that was launched, and its
  metadata carries pyproject's pins (torch, transformers, peft, trl, accelerate, ...);
- constraints.txt: the exact version installed at home of every package the wheel needs, directly or not, so
  the node resolves the same environment (local build tags such as torch's `+cpu` dropped: a GPU node gets the
  CUDA build of the same version).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from lifecycle.errors import LaunchError

DIST = "lifecycle"
SHIP_DIR = "sky-task"  # in the run directory; not importable (hyphen), so it can never shadow a package


@dataclass(frozen=True)
class Payload:
    """The files of a run's `sky-task/` folder, relative to the run directory."""

    wheel: str
    constraints: str
    python: str  # major.minor of the interpreter at home


def project_root() -> Path:
    """The checkout this package runs from (the folder with pyproject.toml)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "lifecycle").is_dir():
        raise LaunchError(
            f"{root}: not a lifecycle checkout (no pyproject.toml): launch from the source tree"
        )
    return root


def wheel_name(version: str | None = None) -> str:
    """The file name pip gives this project's wheel (pure Python, any platform)."""
    version = version or metadata.version(DIST)
    return f"{DIST}-{version}-py3-none-any.whl"


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def planned_payload() -> Payload:
    """Where prepare_payload will put things, without building anything (for a dry run)."""
    return Payload(
        wheel=f"{SHIP_DIR}/{wheel_name()}", constraints=f"{SHIP_DIR}/constraints.txt", python=python_version()
    )


def prepare_payload(run_dir: Path, root: Path | None = None) -> Payload:
    """Build the wheel and write constraints.txt into `<run_dir>/sky-task/`."""
    root = root or project_root()
    ship = run_dir / SHIP_DIR
    ship.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(root, ship)
    (ship / "constraints.txt").write_text(
        "# Exact versions of the environment that launched this run (lifecycle/launch/remote_env.py).\n"
        + "".join(f"{line}\n" for line in home_pins())
    )
    return Payload(
        wheel=f"{SHIP_DIR}/{wheel.name}", constraints=f"{SHIP_DIR}/constraints.txt", python=python_version()
    )


def build_wheel(root: Path, out_dir: Path) -> Path:
    """The wheel of the checkout at `root`, copied into `out_dir` (built once per process per source)."""
    built = _built_wheel(root, _source_state(root))
    target = out_dir / built.name
    shutil.copy2(built, target)
    return target


def _source_state(root: Path) -> str:
    """Names, sizes and mtimes of the packaged sources: changes whenever the code does."""
    h = hashlib.sha256()
    for path in sorted([root / "pyproject.toml", *(root / DIST).rglob("*.py")]):
        stat = path.stat()
        h.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _built_wheel(root: Path, state: str) -> Path:
    """`pip wheel` of a copy of the sources, so the build leaves no build/ or egg-info in the checkout."""
    keep = Path(tempfile.mkdtemp(prefix="lifecycle-wheel-"))
    atexit.register(shutil.rmtree, keep, True)
    with tempfile.TemporaryDirectory(prefix="lifecycle-wheel-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        shutil.copytree(root / DIST, src / DIST, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--quiet",
                "--wheel-dir",
                str(Path(tmp) / "dist"),
                str(src),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise LaunchError(
                f"could not build the lifecycle wheel: {(done.stderr or done.stdout).strip()[-500:]}"
            )
        built = sorted((Path(tmp) / "dist").glob(f"{DIST}-*.whl"))
        if not built:
            raise LaunchError("pip wheel finished without producing a lifecycle wheel")
        return Path(shutil.copy2(built[0], keep / built[0].name))


def home_pins(dist: str = DIST) -> list[str]:
    """`name==version` for every installed package `dist` requires, transitively, sorted by name."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(dist, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            version = metadata.version(name)
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # optional at home (e.g. a platform-specific dependency): left to the node's resolver
        if name != dist:
            pins[canonicalize_name(name)] = _public(version)
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in (extras or {""})
            ):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def _public(version: str) -> str:
    """Drop a local version label: torch 2.13.0+cpu at home -> torch==2.13.0 (a CUDA build on a GPU node)."""
    return re.sub(r"\+.*$", "", version)
