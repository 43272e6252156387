"""The local launcher: runs the training-stage command as a child process in the run directory."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from lifecycle.engines import supervise
from lifecycle.errors import LaunchError
from lifecycle.launch.command import OUTPUT_ENV, worker_argv

# SIGTERM to SIGKILL: the worker stops within a training step (it never waits to write a checkpoint)
_STOP_GRACE_S = 20


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

    The worker runs under the watchdog (lifecycle.engines.supervise), in a process group of its own, so no
    terminal signal reaches it behind our back: an interrupt here (Ctrl-C, SIGTERM, SIGHUP: lifecycle.interrupt)
    stops the whole group, the newest committed checkpoint stays for a resume, and a second signal kills the
    group at once. If this process dies without a word (SIGKILL, a crash), the watchdog stops the group: no
    worker trains on for a run nobody will finish.
    """
    worker = supervise.start(
        worker_argv(), cwd=run_path, env=child_env(output_dir, cache_dir), grace_s=_STOP_GRACE_S, quiet=True
    )
    try:
        code = worker.wait()
    except BaseException:
        worker.stop()
        raise
    if code != 0:
        raise LaunchError(
            f"the training worker exited with code {code} (its output is above). The run directory {run_path} "
            "keeps every committed checkpoint: rerun with --resume to continue from the last one."
        )
