"""Checking a hash-chained log: pure over its bytes, so that a report can say which line broke and how.

Each line of the audit log is one canonical JSON object carrying `seq` (0, 1, 2, ...) and `prev`, the sha256 of
the previous line's bytes (without its newline; 64 zeros for the first). A line's own hash is the sha256 of its
bytes as stored. A record removed, edited, reordered or inserted breaks a link or the run of sequence numbers,
and `check_lines` names the line and the likeliest cause. The chain cannot tell a truncated tail or a wholesale
rewrite on its own: compare the head with an anchor kept elsewhere (a signed export, a head noted in a report).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

GENESIS = "0" * 64

ProblemKind = Literal[
    "malformed", "edited", "removed", "inserted", "reordered", "torn_tail", "broken", "anchor"
]


@dataclass(frozen=True)
class ChainHead:
    """The last record of a chain: keep it somewhere else to detect a truncated or rewritten log later."""

    seq: int
    sha256: str


@dataclass(frozen=True)
class ChainProblem:
    kind: ProblemKind
    line: int  # 1-based line number in the file
    seq: int | None  # the sequence number written on that line, when it could be read
    detail: str

    def __str__(self) -> str:
        at = f"line {self.line}" + (f" (seq {self.seq})" if self.seq is not None else "")
        return f"{at}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class ChainReport:
    """What a check of the whole log found; `ok` only when every link and sequence number holds."""

    path: str
    records: int
    head: ChainHead | None
    problems: tuple[ChainProblem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            head = f"head seq {self.head.seq} sha256 {self.head.sha256}" if self.head else "empty"
            return f"chain intact: {self.records} records, {head}"
        return f"chain BROKEN: {len(self.problems)} problem(s); first at {self.problems[0]}"


@dataclass(frozen=True)
class _Line:
    number: int
    raw: bytes
    sha256: str
    obj: dict[str, Any] | None  # None: not a JSON object with an int seq and a 64-hex prev
    error: str = ""

    @property
    def seq(self) -> int | None:
        return self.obj["seq"] if self.obj is not None else None

    @property
    def prev(self) -> str | None:
        return self.obj["prev"] if self.obj is not None else None


def line_sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their newline) and the torn tail: bytes after the last newline (b"" if none)."""
    end = data.rfind(b"\n") + 1
    body, tail = data[:end], data[end:]
    return (body[:-1].split(b"\n") if body else []), tail


def _parse(number: int, raw: bytes) -> _Line:
    digest = line_sha256(raw)
    try:
        obj = json.loads(raw)
    except ValueError:
        return _Line(number, raw, digest, None, "not JSON")
    if not isinstance(obj, dict):
        return _Line(number, raw, digest, None, "not a JSON object")
    seq, prev = obj.get("seq"), obj.get("prev")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return _Line(number, raw, digest, None, "no sequence number")
    if not isinstance(prev, str) or len(prev) != 64 or any(c not in "0123456789abcdef" for c in prev):
        return _Line(number, raw, digest, None, "no link to the previous record")
    return _Line(number, raw, digest, obj)


def check_lines(
    path: str, lines: Sequence[bytes], torn_tail: bytes = b"", anchor: ChainHead | None = None
) -> ChainReport:
    """Check every link and sequence number; each problem names its line and what most likely happened."""
    parsed = [_parse(number, raw) for number, raw in enumerate(lines, start=1)]
    problems = _walk(parsed)
    if problems and _only_reordered(parsed):
        problems = _reorder_problems(parsed)
    good = [line for line in parsed if line.obj is not None]
    if torn_tail:
        problems.append(
            ChainProblem(
                "torn_tail",
                len(lines) + 1,
                None,
                f"{len(torn_tail)} bytes after the last complete record: a write that never finished "
                "(the next writer to open the log moves them aside)",
            )
        )
    head = ChainHead(good[-1].seq, good[-1].sha256) if good and good[-1].seq is not None else None
    if anchor is not None:
        problems.extend(_check_anchor(parsed, anchor))
    return ChainReport(path=path, records=len(good), head=head, problems=tuple(problems))


def _walk(parsed: list[_Line]) -> list[ChainProblem]:
    problems: list[ChainProblem] = []
    seen: dict[tuple[str, int], None] = {}
    by_hash: dict[str, list[int]] = {}
    for index, line in enumerate(parsed):
        by_hash.setdefault(line.sha256, []).append(index)
    referenced = Counter(line.prev for line in parsed if line.prev is not None)

    def report(kind: ProblemKind, index: int, detail: str) -> None:
        line = parsed[index]
        if (kind, line.number) not in seen:
            seen[(kind, line.number)] = None
            problems.append(ChainProblem(kind, line.number, line.seq, detail))

    pred: int | None = None  # index of the last line taken as part of the chain
    pred_seq: int | None = None  # its sequence number as the chain expects it
    for index, line in enumerate(parsed):
        if by_hash[line.sha256][0] != index:
            first = parsed[by_hash[line.sha256][0]]
            report("inserted", index, f"a byte-for-byte copy of line {first.number}")
            continue
        if line.obj is None:
            report("malformed", index, f"not an audit record: {line.error}")
            pred, pred_seq = index, (pred_seq + 1 if pred_seq is not None else None)
            continue
        seq = line.seq
        assert seq is not None  # parsed lines always carry one
        if pred is None:
            if line.prev == GENESIS and seq == 0:
                pass
            elif line.prev == GENESIS:
                report("edited", index, f"the first record must have seq 0, not {seq}")
            else:
                report(
                    "removed", index, f"the log does not start at its first record: seq 0..{seq - 1} missing"
                )
            pred, pred_seq = index, 0 if line.prev == GENESIS else seq
            continue
        before = parsed[pred]
        expected = pred_seq + 1 if pred_seq is not None else None
        if line.prev == before.sha256:
            if expected is not None and seq != expected:
                report("edited", index, f"seq {seq} where {expected} follows: the record was changed")
            pred, pred_seq = index, expected if expected is not None else seq
            continue
        nxt = parsed[index + 1] if index + 1 < len(parsed) else None
        if nxt is not None and nxt.prev == before.sha256:
            report("inserted", index, f"the next record links past it to line {before.number}")
            continue
        link = line.prev or ""
        claimed = by_hash.get(link, [])
        if claimed and referenced[link] > 1:
            # Two records claim the same predecessor: the one the chain continues from is genuine
            target = parsed[claimed[0]]
            rivals = [i for i, p in enumerate(parsed) if p.prev == line.prev and i != index]
            if line.sha256 in referenced:
                for rival in rivals:
                    if parsed[rival].sha256 not in referenced:
                        report(
                            "inserted",
                            rival,
                            f"claims to follow line {target.number}, as line {line.number} does, "
                            "which the chain continues from",
                        )
            elif nxt is not None:
                report("inserted", index, f"claims to follow line {target.number}, whose successor exists")
                continue
            else:
                others = ", ".join(str(parsed[rival].number) for rival in rivals)
                report(
                    "inserted",
                    index,
                    f"lines {others} and {line.number} both claim to follow line {target.number}: "
                    "one was inserted",
                )
            pred, pred_seq = index, seq
            continue
        if claimed:
            target = parsed[claimed[0]]
            report("reordered", index, f"belongs right after line {target.number} (seq {target.seq})")
            pred, pred_seq = index, seq
            continue
        if expected is not None and seq == expected:
            report(
                "edited",
                pred,
                f"its bytes no longer hash to the link line {line.number} recorded: it was changed after "
                f"it was written (or line {line.number} was not written by the log)",
            )
        elif expected is not None and seq > expected:
            missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
            report("removed", index, f"{missing} missing between line {before.number} and line {line.number}")
        else:
            report(
                "broken",
                index,
                f"does not follow line {before.number}: its link matches no record in the log "
                "(inserted, or edited)",
            )
        pred, pred_seq = index, seq
    return problems


def _only_reordered(parsed: list[_Line]) -> bool:
    """True when sorting the lines by seq gives an unbroken chain: nothing is missing or changed, only moved."""
    if any(line.obj is None for line in parsed):
        return False
    ordered = sorted(parsed, key=lambda line: line.seq or 0)
    prev = GENESIS
    for expected, line in enumerate(ordered):
        if line.seq != expected or line.prev != prev:
            return False
        prev = line.sha256
    return True


def _reorder_problems(parsed: list[_Line]) -> list[ChainProblem]:
    return [
        ChainProblem("reordered", line.number, line.seq, f"seq {line.seq} belongs at line {line.seq + 1}")
        for index, line in enumerate(parsed)
        if line.seq is not None and line.seq != index
    ]


def _check_anchor(parsed: list[_Line], anchor: ChainHead) -> list[ChainProblem]:
    held = [line for line in parsed if line.seq == anchor.seq]
    if any(line.sha256 == anchor.sha256 for line in held):
        return []
    where = held[0].number if held else len(parsed) + 1
    what = "holds a different record" if held else "is gone: the log was truncated"
    return [
        ChainProblem(
            "anchor",
            where,
            anchor.seq,
            f"the anchored record seq {anchor.seq} (sha256 {anchor.sha256}) {what}",
        )
    ]
