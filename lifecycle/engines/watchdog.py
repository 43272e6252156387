"""The watchdog: leads a process group, runs one command in it, and empties the group when the work ends.

Run as `python -m lifecycle.engines.watchdog [--parent PID] [--grace S] -- COMMAND...` in a new session (the
caller passes `start_new_session=True`), so its pid is the group id of everything the command starts. It runs
the command and waits until the command exits, a SIGTERM, SIGINT or SIGHUP asks it to stop, or the process
`--parent` is gone (re-parented: the program that started it died, even by SIGKILL). Then it stops the rest of
the group: SIGTERM, up to `--grace` seconds, SIGKILL. It exits with the command's exit code (128 + N for a
command killed by signal N), after the rest of the group: its exit means the group is empty.

Why a separate process: a SIGKILLed program runs no cleanup, so only a process that outlives it can stop what it
started. Why not PR_SET_PDEATHSIG on the watchdog: that fires when the parent *thread* exits, and servers are
started from worker threads too; re-parenting is per process. The watchdog is single-threaded, so its child does
get PDEATHSIG: a watchdog killed from outside still stops the command. As a child subreaper it inherits and reaps
orphaned descendants (vLLM's EngineCore and workers, torchrun's ranks), so none is left as a zombie or escapes to
init while it waits. It imports only the standard library: it runs in any environment, and starts in ~30 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.1  # how often it looks at the command and its parent
KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the kernel to take the processes away
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def group_members(pgid: int, *, exclude: int | None = None) -> list[int]:
    """The live (not zombie) processes of a process group, read from /proc."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == exclude:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(name))
    return members


def stop_group(
    pgid: int, grace_s: float, *, exclude: int | None = None, child: subprocess.Popen[bytes] | None = None
) -> bool:
    """SIGTERM every member but `exclude`, reap exited children, wait up to `grace_s`, then SIGKILL.

    True if the group was emptied. `child`, if given, gets its exit code recorded when it is reaped here.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
        for pid in group_members(pgid, exclude=exclude):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while True:
            _reap(child)
            if not group_members(pgid, exclude=exclude):
                return True
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if sig == signal.SIGTERM:
            _say(f"processes left after {grace_s:.0f} s: SIGKILL")
    return False


def exit_status(returncode: int | None) -> int:
    """A Popen returncode as a shell exit status: 128 + N when killed by signal N; 128 + SIGTERM if unknown."""
    if returncode is None:
        return 128 + signal.SIGTERM
    return returncode if returncode >= 0 else 128 - returncode


def run(command: Sequence[str], *, parent: int | None, grace_s: float, quiet: bool = False) -> int:
    """Run `command` under watch (see the module docstring) and return the exit status to leave with."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    why: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        why.append(f"{signal.Signals(signum).name} received")

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    child: subprocess.Popen[bytes] | None = None
    if parent is not None and os.getppid() != parent:
        why.append(f"parent process {parent} was gone before the start")
    elif not why:
        # preexec_fn is safe here: this process has one thread
        child = subprocess.Popen(command, preexec_fn=functools.partial(_die_with, os.getpid()))
    while child is not None and child.poll() is None and not why:
        if parent is not None and os.getppid() != parent:
            why.append(f"parent process {parent} is gone")
        time.sleep(POLL_S)
    if why and child is not None and not quiet:
        _say(f"{why[0]}: stopping {os.path.basename(command[0])} and its process group")
    stop_group(os.getpgrp(), grace_s, exclude=os.getpid(), child=child)
    if child is not None and child.returncode is None:
        child.wait()
    return exit_status(child.returncode if child is not None else None)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lifecycle.engines.watchdog", description=__doc__)
    parser.add_argument("--parent", type=int, help="stop when this process is no longer the parent")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL")
    parser.add_argument("--quiet", action="store_true", help="say nothing about a requested stop")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    sys.stdout.flush()
    os._exit(
        run(command, parent=args.parent, grace_s=args.grace, quiet=args.quiet)
    )  # no interpreter teardown to wait on


def _die_with(watchdog: int) -> None:
    """In the command's process before exec: SIGTERM when the watchdog dies (exec keeps the setting, and resets
    the watchdog's own signal handlers to the defaults). If the watchdog died before the request took effect,
    the command does not start."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != watchdog:
        os._exit(1)


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the polling still stops the group
        ctypes.CDLL(None).prctl(option, value, 0, 0, 0)


def _reap(child: subprocess.Popen[bytes] | None) -> None:
    """Collect exited children (and orphans adopted as subreaper), keeping the command's exit code."""
    try:
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                return
            if child is not None and pid == child.pid and child.returncode is None:
                child.returncode = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        pass


def _say(message: str) -> None:
    print(f"[watchdog] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
