"""Budgets: reserve before the call, settle after; pure rules in tables and random sequences, then the SQLite
store they run on (one transaction each, several threads at once)."""

from __future__ import annotations

import datetime as dt
import random
import threading
from pathlib import Path

import pytest
from route_world import upstream

from lifecycle.pool.schema import Pool
from lifecycle.route.budget import (
    BudgetState,
    Reservation,
    SqliteBudgets,
    Usage,
    cost,
    estimate,
    period_start,
    reserve,
    roll,
    settle,
)
from lifecycle.route.decide import Refusal
from lifecycle.route.policy import Budget, Price, RoutingPolicy, Target
from lifecycle.route.targets import resolve_target

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
TOKENS = Budget(period="day", tokens=1000)
DOLLARS = Budget(period="month", dollars=1.0)
CENTS = Budget(period="hour", dollars=0.3)


@pytest.mark.parametrize(
    ("period", "start"),
    [
        ("hour", dt.datetime(2026, 3, 14, 15, tzinfo=UTC)),
        ("day", dt.datetime(2026, 3, 14, tzinfo=UTC)),
        ("month", dt.datetime(2026, 3, 1, tzinfo=UTC)),
    ],
)
def test_period_start(period: str, start: dt.datetime) -> None:
    assert period_start(period, NOW) == start  # type: ignore[arg-type]
    # the same instant seen from another zone is the same period
    assert period_start(period, NOW.astimezone(dt.timezone(dt.timedelta(hours=-8)))) == start  # type: ignore[arg-type]


def state(used: Usage = Usage(), reserved: Usage = Usage(), budget: Budget = TOKENS) -> BudgetState:
    return BudgetState("acme", period_start(budget.period, NOW), used, reserved)


@pytest.mark.parametrize(
    ("budget", "used", "held", "asked", "fits"),
    [
        (TOKENS, 0, 0, 1000, True),  # exactly the budget fits
        (TOKENS, 0, 0, 1001, False),  # more than the whole budget never fits
        (TOKENS, 600, 0, 400, True),
        (TOKENS, 600, 1, 400, False),  # what is held counts
        (TOKENS, 1000, 0, 0, True),
        (DOLLARS, 0.7, 0.2, 0.1, True),
        (DOLLARS, 0.7, 0.2, 0.11, False),
        (
            CENTS,
            0.1,
            0.0,
            0.2,
            True,
        ),  # 0.1 + 0.2 is a little over 0.3 as floats: exactly the budget still fits
    ],
)
def test_reserve(budget: Budget, used: float, held: float, asked: float, fits: bool) -> None:
    def usage(v: float) -> Usage:
        return Usage(tokens=int(v)) if budget.tokens else Usage(dollars=v)

    before = state(usage(used), usage(held), budget)
    result = reserve(before, budget, usage(asked))
    if fits:
        assert isinstance(result, Reservation)
        assert result.state.reserved == before.reserved + usage(asked) and result.state.used == before.used
    else:
        assert isinstance(result, Refusal) and result.status == 429 and result.code == "budget_exceeded"
        assert "acme" in result.message and result.error_body()["error"]["type"] == "RateLimitError"


def test_settle_releases_the_hold_and_counts_the_real_usage() -> None:
    held = reserve(state(), TOKENS, Usage(300))
    assert isinstance(held, Reservation)
    after = settle(held.state, held, Usage(120))
    assert (after.used, after.reserved) == (Usage(120), Usage())
    # settled after its period ended: the hold went with the period, the usage counts now
    later = roll(after, "day", NOW + dt.timedelta(days=1))
    assert later.used == Usage() and later.period_start > after.period_start
    assert settle(later, held, Usage(50)) == BudgetState("acme", later.period_start, Usage(50), Usage())


def test_reserve_and_settle_random_sequences_never_pass_the_limit() -> None:
    rng = random.Random(3)
    for _ in range(200):
        current = state()
        open_: list[Reservation] = []
        for _ in range(30):
            if open_ and rng.random() < 0.5:
                done = open_.pop(rng.randrange(len(open_)))
                current = settle(current, done, Usage(rng.randint(0, done.amount.tokens)))
            else:
                result = reserve(current, TOKENS, Usage(rng.randint(1, 400)))
                if isinstance(result, Reservation):
                    current = result.state
                    open_.append(result)
            # a reservation never lets used + held pass the limit; usage settles at most what was held
            assert current.used.tokens + current.reserved.tokens <= 1000
            assert current.reserved.tokens == sum(r.amount.tokens for r in open_)


def test_estimate_prices_the_dearest_backend_a_fallback_may_reach() -> None:
    the_policy = RoutingPolicy(upstreams=[upstream("cheap", "hosted", price=(1.0, 1.0)), upstream("dear")])
    found = [resolve_target(Target(target=name), Pool(), the_policy) for name in ("cheap", "dear")]
    candidates = [c for item in found if not isinstance(item, str) for c in item]
    assert [c.backend for c in candidates] == ["cheap", "dear"]
    assert cost(None, 10**6, 10**6) == 0.0
    assert cost(Price(input_per_million=2.0, output_per_million=8.0), 500_000, 125_000) == pytest.approx(2.0)
    usage = estimate(candidates, 1000, 500)
    assert usage.tokens == 1500 and usage.dollars == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
    assert estimate([], 10, 5) == Usage(15, 0.0)


# ------------------------------------------------------------------------------------------------ the store


def test_sqlite_store_reserves_settles_once_and_refuses_past_the_limit(tmp_path: Path) -> None:
    store = SqliteBudgets(tmp_path / "budgets.sqlite")
    first = store.reserve("acme", TOKENS, Usage(600), NOW)
    assert isinstance(first, Reservation) and first.id is not None
    refused = store.reserve("acme", TOKENS, Usage(500), NOW)
    assert isinstance(refused, Refusal) and refused.status == 429
    assert isinstance(store.reserve("other", TOKENS, Usage(500), NOW), Reservation)  # tenants apart
    store.settle(first, Usage(200), TOKENS, NOW)
    store.settle(first, Usage(200), TOKENS, NOW)  # a retry of the settle holds nothing twice
    now = store.state("acme", TOKENS, NOW)
    assert (now.used, now.reserved) == (Usage(400), Usage())
    assert isinstance(store.reserve("acme", TOKENS, Usage(600), NOW), Reservation)
    # a new day starts from zero
    tomorrow = NOW + dt.timedelta(days=1)
    assert store.state("acme", TOKENS, tomorrow) == BudgetState("acme", period_start("day", tomorrow))
    assert isinstance(store.reserve("acme", TOKENS, Usage(1000), tomorrow), Reservation)


def test_sqlite_store_releases_reservations_a_dead_router_left(tmp_path: Path) -> None:
    store = SqliteBudgets(tmp_path / "budgets.sqlite")
    lost = store.reserve("acme", TOKENS, Usage(700), NOW)
    assert isinstance(lost, Reservation)
    kept = store.reserve("acme", TOKENS, Usage(100), NOW + dt.timedelta(minutes=10))
    assert isinstance(kept, Reservation)
    assert store.release_stale(NOW + dt.timedelta(minutes=5)) == 1
    assert store.state("acme", TOKENS, NOW).reserved == Usage(100)
    store.settle(lost, Usage(30), TOKENS, NOW)  # a late settle still counts its usage, holds nothing
    assert store.state("acme", TOKENS, NOW) == BudgetState(
        "acme", period_start("day", NOW), Usage(30), Usage(100)
    )


def test_sqlite_store_is_one_transaction_per_call_across_threads(tmp_path: Path) -> None:
    store = SqliteBudgets(tmp_path / "budgets.sqlite")
    granted: list[Reservation] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(15):
            result = store.reserve("acme", TOKENS, Usage(10), NOW)
            if isinstance(result, Reservation):
                with lock:
                    granted.append(result)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 60 and len({r.id for r in granted}) == 60
    assert store.state("acme", TOKENS, NOW).reserved == Usage(600)
    for r in granted:
        store.settle(r, Usage(5), TOKENS, NOW)
    assert store.state("acme", TOKENS, NOW) == BudgetState(
        "acme", period_start("day", NOW), Usage(300), Usage()
    )
