"""The router's audit log: one append-only, hash-chained JSON line per request, which answers "where did this
tenant's data go" and proves afterwards that no line was removed or changed.

A record names where the request went (every backend tried, the one that answered last), what served it
(registered version, quantization), what it cost and the prompt's keyed HMAC; never prompt or completion text.

Writing. One `AuditLog` per process (it reopens itself after a fork); its appends are serialised across threads
by a lock and across processes by `flock` on the log file, and each record's `seq` and `prev` are read from the
file's last line under that lock, so any number of writers keep one chain. A record is one `write` of a
canonical JSON line and its newline.

Durability: with `durability="fsync"` (the default) `append` returns only after `fsync`, so an acknowledged
record survives a power cut; with `"flush"` it is in the kernel's page cache when `append` returns: it survives
the process dying, not the machine (a router taking thousands of requests a second may choose this). Either
way a crash in the middle of a write leaves bytes after the last newline, a torn tail: the next `AuditLog` to
open or append moves them to `<log>.torn.<offset>` and carries on (`repair=True`), or refuses (`repair=False`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from lifecycle.errors import AuditLogError
from lifecycle.route.chain import GENESIS, ChainHead, ChainReport, check_lines, line_sha256, split_lines

FORMAT = 1
HEX64 = re.compile(r"^[0-9a-f]{64}$")
# error.type and outcome values are low-cardinality names (a status code, an exception class), never messages:
# an upstream's error message can quote the prompt
TOKEN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
Outcome = Literal["ok", "error", "rejected"]
Durability = Literal["fsync", "flush"]


@dataclass(frozen=True)
class Attempt:
    """One upstream the request was sent to. Its data reached that backend whatever the outcome."""

    backend: str
    provider: str
    region: str | None
    residency: str  # where the backend keeps data: self_hosted, rented, external (policy.BackendResidency)
    outcome: str  # "ok", or the error.type that moved the request on ("timeout", "503", ...)

    def __post_init__(self) -> None:
        if not TOKEN.match(self.outcome):
            raise ValueError(f"an attempt's outcome is a short name, not {self.outcome[:20]!r}...")


@dataclass(frozen=True)
class AuditRecord:
    """What the router knows about one request once it ends."""

    request_id: str
    tenant: str
    route: str
    residency: str  # the rule the request ran under: self_hosted, rented, any (policy.TenantResidency)
    cost_class: str  # pool, hosted, frontier
    attempts: tuple[Attempt, ...]  # in the order tried; the last one answered when outcome is "ok"
    model_name: str | None
    model_version: int | None
    quantization_scheme: str | None
    quantization_config_sha256: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    prompt_hmac: str
    hmac_key_id: str
    received_at: datetime
    finished_at: datetime
    outcome: Outcome
    error_type: str | None = None
    trace_id: str | None = None

    def __post_init__(self) -> None:
        if not HEX64.match(self.prompt_hmac):
            raise ValueError("prompt_hmac must be 64 lowercase hex digits (telemetry.prompt_hmac)")
        if self.quantization_config_sha256 is not None and not HEX64.match(self.quantization_config_sha256):
            raise ValueError("quantization_config_sha256 must be 64 lowercase hex digits")
        if self.error_type is not None and not TOKEN.match(self.error_type):
            raise ValueError(f"error_type is a short name, not {self.error_type[:20]!r}...")
        if self.input_tokens < 0 or self.output_tokens < 0 or self.cost_usd < 0:
            raise ValueError("tokens and cost are never negative")
        if self.received_at.tzinfo is None or self.finished_at.tzinfo is None:
            raise ValueError("timestamps must carry a time zone")

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def backend(self) -> str | None:
        return self.last.backend if self.last else None

    def to_json(self) -> dict[str, Any]:
        last = self.last
        return {
            "v": FORMAT,
            "request_id": self.request_id,
            "tenant": self.tenant,
            "route": self.route,
            "residency": self.residency,
            "cost_class": self.cost_class,
            # where it ended, repeated from the attempts so that a reader can grep for it
            "backend": last.backend if last else None,
            "provider": last.provider if last else None,
            "region": last.region if last else None,
            "attempts": [a.__dict__ for a in self.attempts],
            "model_name": self.model_name,
            "model_version": self.model_version,
            "quantization_scheme": self.quantization_scheme,
            "quantization_config_sha256": self.quantization_config_sha256,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": str(self.cost_usd),
            "prompt_hmac": self.prompt_hmac,
            "hmac_key_id": self.hmac_key_id,
            "received_at": self.received_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "outcome": self.outcome,
            "error_type": self.error_type,
            "trace_id": self.trace_id,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AuditRecord:
        try:
            return cls(
                request_id=obj["request_id"],
                tenant=obj["tenant"],
                route=obj["route"],
                residency=obj["residency"],
                cost_class=obj["cost_class"],
                attempts=tuple(Attempt(**a) for a in obj["attempts"]),
                model_name=obj["model_name"],
                model_version=obj["model_version"],
                quantization_scheme=obj["quantization_scheme"],
                quantization_config_sha256=obj["quantization_config_sha256"],
                input_tokens=obj["input_tokens"],
                output_tokens=obj["output_tokens"],
                cost_usd=Decimal(obj["cost_usd"]),
                prompt_hmac=obj["prompt_hmac"],
                hmac_key_id=obj["hmac_key_id"],
                received_at=datetime.fromisoformat(obj["received_at"]),
                finished_at=datetime.fromisoformat(obj["finished_at"]),
                outcome=obj["outcome"],
                error_type=obj["error_type"],
                trace_id=obj["trace_id"],
            )
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise ValueError(f"not an audit record: {exc!r}") from None


@dataclass(frozen=True)
class LoggedRecord:
    """A record as it stands in the log: its place in the chain and its line's hash."""

    seq: int
    prev: str
    sha256: str
    line: int
    record: AuditRecord


@dataclass(frozen=True)
class AuditSnapshot:
    """The records of a log and the check of its chain, read under one lock so that they agree."""

    records: tuple[LoggedRecord, ...]
    chain: ChainReport
    lines: tuple[bytes, ...] = field(repr=False)


def encode(record: AuditRecord, seq: int, prev: str) -> bytes:
    """The canonical line for a record (no newline): sorted keys, no spaces, UTF-8."""
    obj = {**record.to_json(), "seq": seq, "prev": prev}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class AuditLog:
    """Appends records to one chained log file; safe across threads and processes (see the module docstring)."""

    def __init__(self, path: Path, *, durability: Durability = "fsync", repair: bool = True) -> None:
        self.path = Path(path)
        self.durability = durability
        self.repair = repair
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = -1
        self._size = -1  # file size after our last look; another writer's append changes it
        self._head: tuple[int, str] = (-1, GENESIS)
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        self._pid = os.getpid()
        self._size = -1
        if created:
            _fsync_dir(self.path.parent)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._sync_head()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def append(self, record: AuditRecord) -> LoggedRecord:
        """Write one record at the end of the chain; returns it with its seq, link and hash."""
        with self._lock:
            if self._fd < 0:
                raise AuditLogError(f"{self.path}: the audit log is closed")
            if self._pid != os.getpid():  # a forked child shares the parent's lock: take its own
                os.close(self._fd)
                self._open()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._sync_head()
                seq, prev = self._head[0] + 1, self._head[1]
                line = encode(record, seq, prev)
                _write_all(self._fd, line + b"\n")
                if self.durability == "fsync":
                    os.fsync(self._fd)
                self._size += len(line) + 1
                digest = line_sha256(line)
                self._head = (seq, digest)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return LoggedRecord(seq=seq, prev=prev, sha256=digest, line=seq + 1, record=record)

    def head(self) -> ChainHead | None:
        """The last record written (by anyone) when last looked at: anchor it elsewhere."""
        with self._lock:
            seq, digest = self._head
        return ChainHead(seq, digest) if seq >= 0 else None

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _sync_head(self) -> None:
        """Under the file lock: repair or refuse a torn tail, and read the head if another writer moved it."""
        size = os.fstat(self._fd).st_size
        if size == self._size:
            return
        end = _last_newline(self._fd, size) + 1
        if end < size:
            self._torn_tail(end, size)
            size = end
        self._size = size
        if size == 0:
            self._head = (-1, GENESIS)
            return
        last = _line_before(self._fd, size)
        try:
            obj = json.loads(last)
            seq = obj["seq"]
            if not isinstance(seq, int):
                raise TypeError("seq")
        except (ValueError, KeyError, TypeError):
            raise AuditLogError(
                f"{self.path}: the last line is not an audit record; nothing was written. "
                "Check the log with lifecycle.route.audit.verify_chain"
            ) from None
        self._head = (seq, line_sha256(last))

    def _torn_tail(self, end: int, size: int) -> None:
        if not self.repair:
            raise AuditLogError(
                f"{self.path}: {size - end} bytes after the last complete record (a write that never "
                "finished); nothing was written. Open it with repair=True to move them aside"
            )
        aside = self.path.with_name(f"{self.path.name}.torn.{end}")
        aside.write_bytes(os.pread(self._fd, size - end, end))
        with aside.open("rb") as fh:
            os.fsync(fh.fileno())
        os.ftruncate(self._fd, end)
        os.fsync(self._fd)


def read_log(path: Path, *, anchor: ChainHead | None = None) -> AuditSnapshot:
    """Every record of a log and the check of its chain, read under a shared lock (writers wait)."""
    path = Path(path)
    if not path.exists():
        raise AuditLogError(f"{path}: no audit log here")
    with path.open("rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        try:
            data = fh.read()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    lines, tail = split_lines(data)
    chain = check_lines(str(path), lines, tail, anchor)
    return AuditSnapshot(records=tuple(_records(lines)), chain=chain, lines=tuple(lines))


def verify_chain(path: Path, *, anchor: ChainHead | None = None) -> ChainReport:
    """Check that no record of the log was removed, edited, reordered or inserted; problems name their line.

    The last record has no successor to vouch for it: an edit to it, a truncated log or a rewritten one cannot
    be told from the log's own bytes. With `anchor` (a head noted earlier: `AuditLog.head()`, an export's
    head), also check that the log still holds that record unchanged.
    """
    return read_log(path, anchor=anchor).chain


def _records(lines: list[bytes]) -> Iterator[LoggedRecord]:
    """The lines that read as records; the chain report speaks for the others."""
    for number, raw in enumerate(lines, start=1):
        try:
            obj = json.loads(raw)
            yield LoggedRecord(
                seq=obj["seq"],
                prev=obj["prev"],
                sha256=line_sha256(raw),
                line=number,
                record=AuditRecord.from_json(obj),
            )
        except (ValueError, KeyError, TypeError):
            continue


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _last_newline(fd: int, size: int) -> int:
    """Offset of the last newline in the file, or -1."""
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        found = os.pread(fd, pos - start, start).rfind(b"\n")
        if found >= 0:
            return start + found
        pos = start
    return -1


def _line_before(fd: int, end: int) -> bytes:
    """The complete line that ends with the newline at `end - 1`, without it."""
    start = _last_newline(fd, end - 1) + 1
    return os.pread(fd, end - 1 - start, start)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
