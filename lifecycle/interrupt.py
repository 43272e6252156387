"""SIGINT, SIGTERM and SIGHUP at the CLI edge: the first stops the work cleanly, a second one at once.

`install()`, once in the CLI's `main`, makes the first of these signals raise `Interrupted` in the main thread,
so the `finally` and `except BaseException` blocks on the way out stop the training worker and any vLLM server,
and the pipeline records the run as interrupted. The process groups this process starts (the local training
worker, each vLLM server) are registered here: a second signal, while that cleanup runs, SIGKILLs every one of
them and exits with 128 + signum.

`Interrupted` is a BaseException but not a KeyboardInterrupt: typer turns a KeyboardInterrupt into a silent
exit 130 before `main` sees it, and a stop request must not meet code that catches Ctrl-C to carry on.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_groups: set[int] = set()
_received: list[int] = []  # the stop signals caught so far, in order


class Interrupted(BaseException):
    """A stop signal arrived. `kept` says what of the work survives, for the one line the CLI prints."""

    def __init__(self, signum: int, kept: str | None = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.kept = kept

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {signal_name(self.signum)}" + (f": {self.kept}" if self.kept else "")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP from now on (call from the main thread). A signal this process was
    started with ignored stays ignored: `nohup` (SIGHUP) and a script's background job (SIGINT) mean that."""
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)


def installed() -> bool:
    """Whether SIGTERM raises `Interrupted` here: then nobody else should handle SIGTERM."""
    return signal.getsignal(signal.SIGTERM) is _on_signal


def received() -> int | None:
    """The first stop signal caught, if any: the reason the work is ending, whatever exception carries it out."""
    return _received[0] if _received else None


@contextlib.contextmanager
def child_group(pgid: int) -> Iterator[None]:
    """Register a child's process group (its leader's pid) while the block runs: the block must end only once
    the leader is reaped, since a reaped leader's pid, and so the group id, may be reused."""
    register_group(pgid)
    try:
        yield
    finally:
        unregister_group(pgid)


def register_group(pgid: int) -> None:
    _groups.add(pgid)


def unregister_group(pgid: int) -> None:
    _groups.discard(pgid)


def kill_groups() -> None:
    """SIGKILL every registered process group."""
    for pgid in list(_groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _received:
        # the second signal: the clean stop takes too long, or hangs. Nothing in Python runs after this.
        kill_groups()
        with contextlib.suppress(OSError):
            os.write(2, f"\n{signal_name(signum)} again: child processes killed, stopping now\n".encode())
        os._exit(128 + signum)
    _received.append(signum)
    raise Interrupted(signum)  # Python runs signal handlers in the main thread
