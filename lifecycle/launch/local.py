"""The local launcher: runs the training-stage command as a child process in the run directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from lifecycle import interrupt
from lifecycle.errors import LaunchError
from lifecycle.launch.command import OUTPUT_ENV, worker_argv

# SIGTERM to SIGKILL: the worker stops within a training step (it never waits to write a checkpoint)
_STOP_GRACE_S = 20

# Linux: runs first in the worker's process, then becomes the worker (exec keeps both settings). It asks for
# SIGTERM when the launcher dies, even by SIGKILL, and takes SIGTERM even where the launcher ignores it. If the
# launcher died before the request took effect, the worker does not start. (Not a preexec_fn: Python code between
# fork and exec can deadlock in a process with threads, and this one has a few.)
_DIE_WITH_LAUNCHER = """
import ctypes, os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_DFL)
ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit("the launcher is gone")
os.execvp(sys.argv[2], sys.argv[2:])
"""


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

    The worker runs in a process group of its own, so no terminal signal reaches it behind our back: an
    interrupt here (Ctrl-C, SIGTERM, SIGHUP: lifecycle.interrupt) stops the whole group, the newest committed
    checkpoint stays for a resume, and a second signal kills the group at once. If this process dies without a
    word (SIGKILL, a crash), Linux sends the worker SIGTERM: no worker trains on for a run nobody will finish.
    """
    argv = worker_argv()
    if sys.platform.startswith("linux"):
        argv = [sys.executable, "-c", _DIE_WITH_LAUNCHER, str(os.getpid()), *argv]
    proc = subprocess.Popen(argv, cwd=run_path, env=child_env(output_dir, cache_dir), start_new_session=True)
    with interrupt.child_group(proc.pid):
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
    """SIGTERM the worker's group and wait for the worker; SIGKILL the group if it is slow, and anything left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=_STOP_GRACE_S)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # processes the worker started in its group (torchrun's ranks) must not outlive it; the group id cannot be
    # reused while any of them lives
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
