"""One at a time, across processes: an exclusive lock file that names its holder, refused at once when taken."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def held(path: Path, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold `path` locked while the block runs; if another process holds it, raise `busy(holder)` at once (the
    holder's pid as it wrote it, or "unknown"). The kernel drops the lock when its holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise busy(fh.read().strip() or "unknown") from None
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)
