"""Tenant budgets: reserved before a call (the most it can cost), settled with what it did cost when it ends.

`reserve` and `settle` are pure functions of a tenant's `BudgetState`; a `BudgetStore` applies them atomically.
`SqliteBudgets` is the store for one machine: each reserve or settle is one `BEGIN IMMEDIATE` transaction, so
several router processes on the same host share it safely. Several routers on several hosts need a shared store
behind the same Protocol: in Redis, one Lua script per operation over a hash per tenant (`period_start`,
`used_*`, `reserved_*`) and a hash of open reservations with an expiry; in Postgres, the two tables below with
`SELECT ... FOR UPDATE` on the tenant's row. Either way the router itself holds nothing that cannot be rebuilt.

A reservation that is never settled (the router died mid-call) is released by `release_stale`, or at the end of
its period, when the period's counts start from zero.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

from lifecycle.route.decide import Refusal
from lifecycle.route.policy import Budget, Price
from lifecycle.route.targets import Candidate

Period = Literal["hour", "day", "month"]
_EPSILON = 1e-9  # dollars summed as floats: a request that exactly fills the budget still fits


@dataclass(frozen=True)
class Usage:
    tokens: int = 0
    dollars: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.tokens + other.tokens, self.dollars + other.dollars)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(max(0, self.tokens - other.tokens), max(0.0, self.dollars - other.dollars))


@dataclass(frozen=True)
class BudgetState:
    """One tenant's counts in the period that began at `period_start` (UTC)."""

    tenant: str
    period_start: dt.datetime
    used: Usage = Usage()
    reserved: Usage = Usage()


@dataclass(frozen=True)
class Reservation:
    """What one request holds of its tenant's budget until it is settled. `id` is the store's."""

    tenant: str
    period_start: dt.datetime
    amount: Usage
    state: BudgetState  # the tenant's state with this reservation counted
    id: int | None = None


def period_start(period: Period, now: dt.datetime) -> dt.datetime:
    """The start (UTC) of the hour, day or calendar month holding `now` (an aware datetime)."""
    now = now.astimezone(dt.timezone.utc)
    if period == "hour":
        return now.replace(minute=0, second=0, microsecond=0)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def roll(state: BudgetState, period: Period, now: dt.datetime) -> BudgetState:
    """The state as of `now`: counts start from zero when a new period has begun."""
    start = period_start(period, now)
    return state if start == state.period_start else BudgetState(state.tenant, start)


def reserve(state: BudgetState, budget: Budget, estimate: Usage) -> Reservation | Refusal:
    """Hold `estimate` against the budget, or 429 when the period's used plus held plus it would pass a limit.
    `state` must be current (`roll`)."""
    after = state.reserved + estimate
    for what, limit, used, held, asked in (
        ("tokens", budget.tokens, state.used.tokens, state.reserved.tokens, estimate.tokens),
        ("dollars", budget.dollars, state.used.dollars, state.reserved.dollars, estimate.dollars),
    ):
        if limit is not None and used + held + asked > limit + _EPSILON:
            shown = (lambda v: f"${v:.4f}") if what == "dollars" else (lambda v: f"{v:,}")
            left = max(0, limit - used - held)
            return Refusal(
                429,
                "budget_exceeded",
                f"tenant {state.tenant}'s {budget.period}ly budget of {shown(limit)} {what} has {shown(left)} "
                f"left; this request may need {shown(asked)}",
            )
    return Reservation(
        state.tenant,
        state.period_start,
        estimate,
        BudgetState(state.tenant, state.period_start, state.used, after),
    )


def settle(state: BudgetState, reservation: Reservation, actual: Usage) -> BudgetState:
    """Release the reservation and count what the call really used. A reservation from a period that has ended
    was cleared with it; the usage still counts in the current period, where it was settled."""
    reserved = (
        state.reserved - reservation.amount
        if reservation.period_start == state.period_start
        else state.reserved
    )
    return replace(state, used=state.used + actual, reserved=reserved)


def cost(price: Price | None, input_tokens: int, output_tokens: int) -> float:
    """Dollars for one call at `price` (None: a pool deployment, $0 per call)."""
    if price is None:
        return 0.0
    return (input_tokens * price.input_per_million + output_tokens * price.output_per_million) / 1e6


def estimate(candidates: Sequence[Candidate], input_tokens: int, max_output_tokens: int) -> Usage:
    """The most a request can cost: its tokens, at the dearest backend its fallback list may reach."""
    dollars = max((cost(c.price, input_tokens, max_output_tokens) for c in candidates), default=0.0)
    return Usage(input_tokens + max_output_tokens, dollars)


class BudgetStore(Protocol):
    """Where budget states live, applied atomically per tenant."""

    def reserve(
        self, tenant: str, budget: Budget, amount: Usage, now: dt.datetime
    ) -> Reservation | Refusal: ...

    def settle(self, reservation: Reservation, actual: Usage, budget: Budget, now: dt.datetime) -> None: ...


_SCHEMA = """
create table if not exists budget (
    tenant text primary key, period_start text not null,
    used_tokens integer not null, used_dollars real not null,
    reserved_tokens integer not null, reserved_dollars real not null);
create table if not exists reservation (
    id integer primary key autoincrement, tenant text not null, period_start text not null,
    tokens integer not null, dollars real not null, made_at text not null);
"""


class SqliteBudgets:
    """A `BudgetStore` in one SQLite file; settling a reservation twice counts it once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with closing(self._connect()) as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("pragma journal_mode=wal")
        return db

    def state(self, tenant: str, budget: Budget, now: dt.datetime) -> BudgetState:
        """The tenant's current counts (for a status page; reserve and settle read their own)."""
        with closing(self._connect()) as db:
            return roll(self._read(db, tenant, budget.period, now), budget.period, now)

    def reserve(self, tenant: str, budget: Budget, amount: Usage, now: dt.datetime) -> Reservation | Refusal:
        db = self._connect()
        try:
            db.execute("begin immediate")
            state = roll(self._read(db, tenant, budget.period, now), budget.period, now)
            result = reserve(state, budget, amount)
            if isinstance(result, Refusal):
                db.execute("rollback")
                return result
            self._write(db, result.state)
            cursor = db.execute(
                "insert into reservation (tenant, period_start, tokens, dollars, made_at) values (?, ?, ?, ?, ?)",
                (tenant, state.period_start.isoformat(), amount.tokens, amount.dollars, _utc(now)),
            )
            db.execute("commit")
            return replace(result, id=cursor.lastrowid)
        finally:
            db.close()

    def settle(self, reservation: Reservation, actual: Usage, budget: Budget, now: dt.datetime) -> None:
        db = self._connect()
        try:
            db.execute("begin immediate")
            gone = db.execute("delete from reservation where id = ?", (reservation.id,)).rowcount == 0
            if gone:  # settled already, or released as stale: its hold is gone, its usage not yet counted
                reservation = replace(reservation, amount=Usage())
            state = roll(self._read(db, reservation.tenant, budget.period, now), budget.period, now)
            self._write(db, settle(state, reservation, actual))
            db.execute("commit")
        finally:
            db.close()

    def release_stale(self, older_than: dt.datetime) -> int:
        """Release reservations made before `older_than` (a router died before settling them). Returns how many."""
        db = self._connect()
        try:
            db.execute("begin immediate")
            rows = db.execute(
                "select id, tenant, period_start, tokens, dollars from reservation where made_at < ?",
                (_utc(older_than),),
            ).fetchall()
            for rid, tenant, start, tokens, dollars in rows:
                row = db.execute(
                    "select period_start, reserved_tokens, reserved_dollars from budget where tenant = ?",
                    (tenant,),
                ).fetchone()
                if row is not None and row[0] == start:
                    held = Usage(row[1], row[2]) - Usage(tokens, dollars)
                    db.execute(
                        "update budget set reserved_tokens = ?, reserved_dollars = ? where tenant = ?",
                        (held.tokens, held.dollars, tenant),
                    )
                db.execute("delete from reservation where id = ?", (rid,))
            db.execute("commit")
            return len(rows)
        finally:
            db.close()

    @staticmethod
    def _read(db: sqlite3.Connection, tenant: str, period: Period, now: dt.datetime) -> BudgetState:
        row = db.execute(
            "select period_start, used_tokens, used_dollars, reserved_tokens, reserved_dollars from budget "
            "where tenant = ?",
            (tenant,),
        ).fetchone()
        if row is None:
            return BudgetState(tenant, period_start(period, now))
        return BudgetState(
            tenant, dt.datetime.fromisoformat(row[0]), Usage(row[1], row[2]), Usage(row[3], row[4])
        )

    @staticmethod
    def _write(db: sqlite3.Connection, state: BudgetState) -> None:
        db.execute(
            "insert into budget values (?, ?, ?, ?, ?, ?) on conflict(tenant) do update set "
            "period_start = excluded.period_start, used_tokens = excluded.used_tokens, "
            "used_dollars = excluded.used_dollars, reserved_tokens = excluded.reserved_tokens, "
            "reserved_dollars = excluded.reserved_dollars",
            (
                state.tenant,
                state.period_start.isoformat(),
                state.used.tokens,
                state.used.dollars,
                state.reserved.tokens,
                state.reserved.dollars,
            ),
        )


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat()
