"""The local launcher: runs the training-stage command as a child process in the run directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from lifecycle.errors import LaunchError
from lifecycle.launch.command import OUTPUT_ENV, worker_argv


def child_env(output_dir: Path, cache_dir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env[OUTPUT_ENV] = str(output_dir)
    env["LIFECYCLE_CACHE_DIR"] = str(cache_dir)
    # the `lifecycle` script of this very environment, even when the user ran .venv/bin/lifecycle off PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_local(run_path: Path, output_dir: Path, cache_dir: Path) -> None:
    """Run `lifecycle worker train recipe.yaml` in `run_path`; raise LaunchError if it fails.

    The child gets its own process group so an interrupt here stops the whole training process tree.
    """
    proc = subprocess.Popen(
        worker_argv(), cwd=run_path, env=child_env(output_dir, cache_dir), start_new_session=True
    )
    try:
        code = proc.wait()
    except BaseException:
        _stop_group(proc)
        raise
    if code != 0:
        raise LaunchError(
            f"the training worker exited with code {code} (its output is above). The run directory {run_path} "
            "keeps every committed checkpoint: rerun with --resume to continue from the last one."
        )


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
