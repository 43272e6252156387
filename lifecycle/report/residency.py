"""Where one tenant's data went: every backend, provider and region its requests reached, with counts and the
rule that allowed each; any request that reached a backend its residency did not allow comes first.

Pure over the audit records: read them with `lifecycle.route.audit.read_log`, which also checks the chain, and
pass both here, so that the report says whether it can prove that no record was removed or changed. Every
attempt counts, not only the backend that answered: a request that failed over had already been sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from lifecycle.route.audit import LoggedRecord
from lifecycle.route.chain import ChainReport


@dataclass(frozen=True, order=True)
class Reach:
    """One place data went."""

    backend: str
    provider: str
    region: str | None
    backend_residency: str


# (the request's residency rule, where it went) -> the rule that allowed it, or None when nothing did
PolicyLookup = Callable[[str, Reach], str | None]


def residency_lookup(
    allowed: Mapping[str, Collection[str]], backends: Mapping[str, str] | None = None
) -> PolicyLookup:
    """A lookup from residency rules (`lifecycle.route.policy.ALLOWED_RESIDENCIES`: rule -> backend residencies
    it allows). With `backends` (backend name -> its residency, from the policy and pool in force) a backend's
    residency is taken from there, not from the record, and a backend they do not name is allowed by nothing.
    """

    def lookup(rule: str, reach: Reach) -> str | None:
        where = reach.backend_residency if backends is None else backends.get(reach.backend)
        if where is None or where not in allowed.get(rule, ()):
            return None
        return f"residency {rule} allows {where}"

    return lookup


@dataclass(frozen=True)
class Violation:
    """A request that reached a backend its residency did not allow."""

    seq: int
    line: int
    request_id: str
    received_at: datetime
    residency: str
    attempt: int  # 1 for the first backend tried
    reach: Reach
    outcome: str


@dataclass(frozen=True)
class ReachRow:
    reach: Reach
    allowed_by: str | None
    attempts: int  # times the tenant's requests were sent there
    answered: int  # of those, how many it answered


@dataclass(frozen=True)
class ResidencyReport:
    tenant: str
    since: datetime | None
    requests: int
    attempts: int
    violations: tuple[Violation, ...]
    rows: tuple[ReachRow, ...]
    chain: ChainReport | None  # None: the chain was not checked, so nothing is proven

    @property
    def clean(self) -> bool:
        """No request went where it must not, and the chain proves the log complete and unchanged."""
        return not self.violations and self.chain is not None and self.chain.ok


def residency_report(
    records: Iterable[LoggedRecord],
    tenant: str,
    since: datetime | None,
    policy_lookup: PolicyLookup,
    *,
    chain: ChainReport | None = None,
) -> ResidencyReport:
    """Where `tenant`'s requests received at or after `since` went, judged by `policy_lookup`."""
    requests = 0
    violations: list[Violation] = []
    attempts: Counter[tuple[Reach, str | None]] = Counter()
    answered: Counter[tuple[Reach, str | None]] = Counter()
    for logged in records:
        record = logged.record
        if record.tenant != tenant or (since is not None and record.received_at < since):
            continue
        requests += 1
        for number, attempt in enumerate(record.attempts, start=1):
            reach = Reach(attempt.backend, attempt.provider, attempt.region, attempt.residency)
            allowed_by = policy_lookup(record.residency, reach)
            attempts[reach, allowed_by] += 1
            answered[reach, allowed_by] += attempt.outcome == "ok"
            if allowed_by is None:
                violations.append(
                    Violation(
                        seq=logged.seq,
                        line=logged.line,
                        request_id=record.request_id,
                        received_at=record.received_at,
                        residency=record.residency,
                        attempt=number,
                        reach=reach,
                        outcome=attempt.outcome,
                    )
                )
    rows = sorted(
        (
            ReachRow(reach, allowed_by, count, answered[reach, allowed_by])
            for (reach, allowed_by), count in attempts.items()
        ),
        key=lambda row: (row.allowed_by is not None, row.reach.backend, str(row.reach)),
    )
    return ResidencyReport(
        tenant=tenant,
        since=since,
        requests=requests,
        attempts=sum(attempts.values()),
        violations=tuple(violations),
        rows=tuple(rows),
        chain=chain,
    )


# ---------------------------------------------------------------- rendering


def _headline(report: ResidencyReport) -> tuple[str, str, str, list[str]]:
    """Title, verdict, the chain's state and its problems, one per line."""
    since = report.since.isoformat() if report.since else "the first record"
    title = (
        f"Residency report for tenant {report.tenant}, since {since}: {report.requests} requests, "
        f"{report.attempts} upstream attempts"
    )
    verdict = (
        f"{len(report.violations)} request attempt(s) reached a backend their residency did not allow"
        if report.violations
        else "every request stayed where its residency allowed"
    )
    if report.chain is None:
        return title, verdict, "Audit log: chain NOT CHECKED: nothing is proven", []
    if report.chain.ok:
        return title, verdict, f"Audit log: {report.chain.summary()}", []
    chain = (
        f"Audit log: chain BROKEN ({len(report.chain.problems)} problem(s)): "
        "records removed or changed cannot be ruled out"
    )
    return title, verdict, chain, [str(problem) for problem in report.chain.problems]


def _violation_cells(v: Violation) -> list[str]:
    return [
        str(v.seq),
        v.received_at.isoformat(timespec="seconds"),
        v.request_id,
        v.residency,
        str(v.attempt),
        v.reach.backend,
        v.reach.provider,
        v.reach.region or "-",
        v.reach.backend_residency,
        v.outcome,
    ]


def _row_cells(row: ReachRow) -> list[str]:
    reach = row.reach
    allowed = row.allowed_by or "NOT ALLOWED"
    cells = [reach.backend, reach.provider, reach.region or "-", reach.backend_residency]
    return [*cells, str(row.attempts), str(row.answered), allowed]


VIOLATION_HEADER = ["seq", "received", "request", "residency", "attempt", "backend", "provider", "region",
                    "backend residency", "outcome"]  # fmt: skip
ROW_HEADER = ["backend", "provider", "region", "residency", "attempts", "answered", "allowed by"]


def render_table(report: ResidencyReport) -> str:
    """The report as plain text for a terminal: violations first, then every place reached."""
    title, verdict, chain, problems = _headline(report)
    out = [title, verdict, chain, *(f"  {problem}" for problem in problems)]
    if report.violations:
        out += [
            "",
            "NOT ALLOWED",
            *_columns(VIOLATION_HEADER, [_violation_cells(v) for v in report.violations]),
        ]
    out += ["", "Reached", *_columns(ROW_HEADER, [_row_cells(row) for row in report.rows])]
    return "\n".join(out) + "\n"


def render_markdown(report: ResidencyReport) -> str:
    """The report as a markdown document: violations first, then every place reached."""
    title, verdict, chain, problems = _headline(report)
    out = [f"# {title}", "", f"**{verdict}**", "", chain, *(f"- {problem}" for problem in problems)]
    if report.violations:
        out += [
            "",
            "## NOT ALLOWED",
            "",
            *_markdown(VIOLATION_HEADER, [_violation_cells(v) for v in report.violations]),
        ]
    out += ["", "## Reached", "", *_markdown(ROW_HEADER, [_row_cells(row) for row in report.rows])]
    return "\n".join(out) + "\n"


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]  # fmt: skip


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]
