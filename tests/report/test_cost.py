"""The cost report over synthetic traffic of every cost class (conftest.py): totals that reconcile with the
audit records' per-request costs to the cent, GPU-hours shared by the tokens served, idle replicas as cost, one-off
costs spread over a version's tokens so far; numbers worked out by hand in each test."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from report_world import POOL, PRICES, T0, T_END, plant_misroute, write_traffic

from lifecycle.report.cost import CostReport, cost_report
from lifecycle.route.audit import read_log
from lifecycle.route.policy import Price

CENT = Decimal("0.01")
ONE_OFF = {("support-bot", 3): Decimal(120)}


def report(path: Path, by: str = "route", **kwargs: object) -> CostReport:
    return cost_report(
        read_log(path).records,
        POOL,
        kwargs.pop("prices", PRICES),  # type: ignore[arg-type]
        by=by,  # type: ignore[arg-type]
        since=T0,
        until=T_END,
        one_off=ONE_OFF,
        **kwargs,  # type: ignore[arg-type]
    )


def near(value: Decimal, expected: str) -> bool:
    return abs(value - Decimal(expected)) < Decimal("0.000001")


def test_totals_reconcile_with_the_per_request_costs_to_the_cent(audit_log: Path) -> None:
    got = report(audit_log)
    in_period = [r.record for r in read_log(audit_log).records if T0 <= r.record.received_at <= T_END]
    recorded = sum((r.cost_usd for r in in_period), Decimal(0))
    # 30 hosted x (2,000 + 500) x $0.88/M = $0.066; 20 frontier x (1,500 x $3 + 700 x $15)/M = $0.30
    assert near(recorded, "0.366")
    total = got.total
    assert total.metered.total.quantize(CENT) == recorded.quantize(CENT)
    assert got.reconciliation.ok and not got.reconciliation.mismatches and not got.reconciliation.unpriced
    assert abs(got.reconciliation.difference) < Decimal("0.000001")
    # the rows add up to the total, and the total is every part of it
    assert sum((r.total.total for r in got.rows), Decimal(0)).quantize(CENT) == total.total.total.quantize(
        CENT
    )
    # GPU: chat-a 2 replicas x 10 h x 1 GPU x $2.50 = $50, chat-idle 1 x 10 h x 2 GPUs x $4 = $80 (idle);
    # one-off: $120 x 50,000 tokens this period / 51,250 so far = $117.0731707...
    assert near(total.gpu.total, "130")
    assert near(total.one_off.total, "117.07317073170731707317")
    assert total.total.total.quantize(CENT) == Decimal("247.44")
    assert (total.requests, total.input_tokens, total.output_tokens) == (91, 130_000, 39_000)


def test_per_million_by_route(audit_log: Path) -> None:
    rows = {r.key: r for r in report(audit_log).rows}
    assert set(rows) == {"support", "bulk", "frontier", "(idle) chat-idle"}
    assert rows["support"].requests == 41  # the refused request is on its route, with no tokens
    # frontier: its price sheet, exactly
    assert rows["frontier"].per_million_input == Decimal(3)
    assert rows["frontier"].per_million_output == Decimal(15)
    assert rows["bulk"].per_million == Decimal("0.88")
    # support: ($50 GPU + $117.07 one-off) over 50,000 tokens, shared per token (output weight 1)
    assert near(rows["support"].per_million or Decimal(0), "3341.463414634146341463")
    assert near(rows["support"].per_million_input - rows["support"].per_million_output, "0")  # type: ignore[operator]
    assert (
        rows["(idle) chat-idle"].total.total == Decimal(80) and rows["(idle) chat-idle"].per_million is None
    )
    idle = next(d for d in report(audit_log).deployments if d.name == "chat-idle")
    assert idle.idle and idle.gpu_hours == Decimal(20)


def test_by_version_and_cost_class(audit_log: Path) -> None:
    versions = {r.key: r.total.total for r in report(audit_log, "version").rows}
    assert set(versions) == {"support-bot/3", "other-bot/1", "llama-hosted", "gpt-frontier", "(refused)"}
    assert versions["other-bot/1"] == Decimal(80)
    classes = {r.key: r.total.total for r in report(audit_log, "cost-class").rows}
    assert set(classes) == {"pool", "hosted", "frontier", "none"}
    assert classes["pool"].quantize(CENT) == Decimal("247.07")
    tenants = report(audit_log, "tenant").rows
    assert {r.key for r in tenants} == {"acme", "(idle) chat-idle"}


def test_replica_uptime_and_output_weight(audit_log: Path) -> None:
    got = report(audit_log, replica_hours={"chat-a": Decimal(5), "chat-idle": Decimal(0)})
    assert got.total.gpu.total == Decimal("12.5")  # 5 replica-hours x 1 GPU x $2.50; chat-idle did not run
    assert "(idle) chat-idle" not in {r.key for r in got.rows}
    weighted = {r.key: r for r in report(audit_log, output_weight=Decimal(4)).rows}["support"]
    # 1,000 input + 4 x 250 output weigh 1:1, so input and output get half each of the same dollars
    assert weighted.total.input.quantize(CENT) == weighted.total.output.quantize(CENT)
    assert near(weighted.per_million_output - 4 * weighted.per_million_input, "0")  # type: ignore[operator]


def test_since_leaves_earlier_requests_out_but_counts_their_tokens_so_far(audit_log: Path) -> None:
    later = cost_report(read_log(audit_log).records, POOL, PRICES, since=T0 + timedelta(hours=5), until=T_END,
                        one_off=ONE_OFF)  # fmt: skip
    assert later.hours == Decimal(5)
    support = {r.key: r for r in later.rows}["support"]
    # support requests at minutes 6i+1 >= 300: i = 50.. are bulk; none of support's 40 fall in, bar the refused one
    assert support.requests == 1 and support.input_tokens == 0
    assert "bulk" in {r.key for r in later.rows}


def test_a_price_sheet_that_changed_does_not_reconcile(audit_log: Path) -> None:
    dearer = {**PRICES, "gpt-frontier": Price(input_per_million=3.0, output_per_million=30.0)}
    got = report(audit_log, prices=dearer)
    assert not got.reconciliation.ok
    assert len(got.reconciliation.mismatches) == 20
    # 20 x 700 output tokens x $15/M more
    assert got.reconciliation.difference.quantize(CENT) == Decimal("0.21")
    unpriced = report(audit_log, prices={})
    assert unpriced.reconciliation.ok and unpriced.reconciliation.unpriced == ("gpt-frontier", "llama-hosted")


def test_records_of_a_planted_misroute_are_costed_too(audit_log: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.jsonl"
    plant_misroute(audit_log, copy)
    got = report(copy)
    # 800 x $3 + 100 x $15 per million = $0.0039 more, recorded and priced alike
    assert near(got.reconciliation.recorded_usd, "0.3699") and got.reconciliation.ok


@pytest.mark.parametrize("weight", [Decimal(1), Decimal(3)])
def test_every_record_is_accounted_once(tmp_path: Path, weight: Decimal) -> None:
    records = write_traffic(tmp_path / "a.jsonl")
    got = report(tmp_path / "a.jsonl", output_weight=weight)
    assert got.total.requests == len(records) - 1  # the one before T0
