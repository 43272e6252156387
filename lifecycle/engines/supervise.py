"""Process supervision: run a command in a process group of its own under the watchdog, wait for it, stop it.

Used for every long-running child: vLLM servers and the local training worker. `start` runs the command under
`lifecycle.engines.watchdog` (this environment's Python, whatever Python the command itself runs), in a new
session, so the watchdog's pid is the group id of everything the command starts (vLLM's EngineCore and workers,
torchrun's ranks). A tied group (the default) ends with this process, even if it is SIGKILLed, and is registered
with `lifecycle.interrupt`, so a second Ctrl-C kills it at once. A detached group outlives this process; a later
process stops it from its `GroupId` with `stop_detached`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from lifecycle import interrupt
from lifecycle.engines import watchdog
from lifecycle.engines.watchdog import group_members

log = logging.getLogger(__name__)

STOP_MARGIN_S = 10.0  # beyond the watchdog's grace: how long to wait for it before SIGKILLing the group

__all__ = [
    "GroupId",
    "Supervised",
    "group_members",
    "raise_on_sigterm",
    "start",
    "start_time",
    "stop_detached",
    "watchdog_argv",
]


@dataclass(frozen=True)
class GroupId:
    """A process group as another process can find it again: the leader's pid and its start time.

    The start time (clock ticks after boot, from /proc) tells the same process from a later one with a reused pid.
    """

    pid: int
    started: int

    def alive(self) -> bool:
        """Whether the leader still runs (a zombie does not), or members of its group are left."""
        return self.ours() and (start_time(self.pid) is not None or bool(group_members(self.pid)))

    def ours(self) -> bool:
        """False once the leader's pid belongs to another process; then the group is gone (Linux reuses no pid
        while a group of that id has members)."""
        return start_time(self.pid) in (self.started, None)


def watchdog_argv(command: Sequence[str], *, parent: int | None, grace_s: float, quiet: bool) -> list[str]:
    """The command line that runs `command` under the watchdog, with this environment's Python.

    By file and in isolated mode (-I): the watchdog imports only the standard library, so it needs neither this
    package on the path nor the command's PYTHONPATH, which it passes on untouched.
    """
    argv = [sys.executable, "-I", str(Path(watchdog.__file__).resolve()), "--grace", str(grace_s)]
    if parent is not None:
        argv += ["--parent", str(parent)]
    if quiet:
        argv.append("--quiet")
    return [*argv, "--", *command]


class Supervised:
    """A command running under the watchdog; `pid` is the watchdog's, which is also the group id.

    Either started here (`start`: this process is the watchdog's parent and reaps it) or found again by its
    `GroupId` (`attach`: a detached group another process started).
    """

    def __init__(
        self, process: subprocess.Popen[bytes] | None, *, group_id: GroupId, grace_s: float, detached: bool
    ) -> None:
        self.process = process
        self.group_id = group_id
        self.grace_s = grace_s
        self.detached = detached
        self._stopped = False
        self._lock = threading.Lock()

    @classmethod
    def attach(cls, group_id: GroupId, grace_s: float) -> Supervised:
        """A detached group started by another process (or an earlier one)."""
        return cls(None, group_id=group_id, grace_s=grace_s, detached=True)

    @property
    def pid(self) -> int:
        return self.group_id.pid

    def poll(self) -> int | None:
        """None while it runs; then the exit status the watchdog reports (-1 for an attached group: unknown)."""
        if self.process is not None:
            return self.process.poll()
        return None if self.group_id.alive() else -1

    def running(self) -> bool:
        return not self._stopped and self.poll() is None

    def members(self) -> list[int]:
        return group_members(self.pid) if self.group_id.ours() else []

    def wait(self) -> int:
        """Wait for the command (and so the whole group) to end; its exit status."""
        if self.process is None:
            while (code := self.poll()) is None:
                time.sleep(0.1)
            return code
        code = self.process.wait()
        interrupt.unregister_group(self.pid)  # its leader is reaped: the group id may be reused from now on
        return code

    def stop(self) -> None:
        """Stop the group and wait until it is empty. Safe to call twice, and from any thread.

        The watchdog stops the rest of the group (SIGTERM, grace, SIGKILL) and exits last; it is reaped last,
        so until then its pid, the group id, cannot be reused and `killpg` cannot reach a stranger's group.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        process = self.process
        if process is None:
            stop_detached(self.group_id, self.grace_s)
            return
        if process.returncode is None:
            if not _exited(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + self.grace_s + STOP_MARGIN_S
                while not _exited(process.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # normally a no-op: the watchdog exits after the group
            process.wait()
        _kill_leftovers(process.pid)
        interrupt.unregister_group(process.pid)


def start(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    grace_s: float,
    output: IO[bytes] | None = None,
    detached: bool = False,
    quiet: bool = False,
) -> Supervised:
    """Start `command` under the watchdog in a new process group; stdout and stderr to `output` (else ours).

    Tied (the default): the group ends when this process ends, and is registered for a second Ctrl-C.
    `detached`: neither; the group runs until it is stopped or the command exits.
    """
    argv = watchdog_argv(command, parent=None if detached else os.getpid(), grace_s=grace_s, quiet=quiet)
    redirect: dict[str, Any] = {"stdout": output, "stderr": subprocess.STDOUT} if output is not None else {}
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,  # a group of its own: stopping it reaches every process the command starts
        **redirect,
    )
    if not detached:
        interrupt.register_group(process.pid)  # a second Ctrl-C or SIGTERM kills the group at once
    group_id = GroupId(process.pid, start_time(process.pid) or 0)
    return Supervised(process, group_id=group_id, grace_s=grace_s, detached=detached)


def stop_detached(group: GroupId, grace_s: float) -> bool:
    """Stop a group this process did not start (or no longer waits for); True if nothing of it is left.

    SIGTERM to the watchdog, which stops the group; SIGKILL to whatever is left after its grace. A leader
    whose pid now belongs to another process (another start time) is left alone.
    """
    if not group.ours():
        return True
    if start_time(group.pid) == group.started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(group.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s + STOP_MARGIN_S
        while start_time(group.pid) == group.started and time.monotonic() < deadline:
            time.sleep(0.05)
    return _kill_leftovers(group.pid) if group.ours() else True


def start_time(pid: int) -> int | None:
    """A live (not zombie) process's start time in clock ticks after boot; None if there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def raise_on_sigterm() -> Callable[[], object]:
    """Make SIGTERM raise SystemExit, so `finally` blocks stop servers; returns the undo.

    Only in the main thread, and only where nobody handles SIGTERM already. Under the CLI lifecycle.interrupt
    does: SIGTERM raises Interrupted (the run is marked interrupted), and a second signal kills the servers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if interrupt.installed() or previous is not signal.SIG_DFL:
        return lambda: None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:  # not a handler installed since
            signal.signal(signal.SIGTERM, previous)

    signal.signal(signal.SIGTERM, on_sigterm)
    return restore


def _kill_leftovers(pgid: int) -> bool:
    """SIGKILL what is left of a group. Only if its watchdog was killed from outside can members be left;
    they still carry the group id. True if the group is empty."""
    deadline = time.monotonic() + watchdog.KILL_WAIT_S
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    if left:
        log.warning("process group %d still has processes %s after SIGKILL", pgid, left)
    return not left


def _exited(pid: int) -> bool:
    """Whether a child has exited, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def describe_processes(pids: Sequence[int]) -> str:
    """What each process is doing, from /proc, and how loaded the machine is: for an error about a process
    that did not get anywhere (starved of CPU, short of memory, or blocked in the kernel), a line each."""
    lines = []
    for pid in pids:
        try:
            fields = _stat_fields(pid)
            name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            name = " ".join(name.split())
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        wchan = _read_or(f"/proc/{pid}/wchan", "?") or "-"
        rss = next(
            (line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("VmRSS")), "?"
        )
        cpu_s = _cpu_s(fields)
        lines.append(f"pid {pid} state {fields[0]} wchan {wchan} cpu {cpu_s:.1f} s rss {rss}: {name[:100]}")
    meminfo = dict(line.split(":", 1) for line in _read_or("/proc/meminfo", "").splitlines() if ":" in line)
    lines.append(
        f"machine: load {' '.join(_read_or('/proc/loadavg', '?').split()[:3])},"
        f" memory available {meminfo.get('MemAvailable', ' ?').strip()} of {meminfo.get('MemTotal', ' ?').strip()}"
    )
    return "\n".join(lines)


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user and system, all threads) the live processes among `pids` have used so far."""
    total = 0.0
    for pid in pids:
        try:
            total += _cpu_s(_stat_fields(pid))
        except OSError:
            continue
    return total


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): state first."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_s(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_or(path: str, default: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return default
