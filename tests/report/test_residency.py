"""The residency report: every place a tenant's requests reached, counted; a misroute planted in a copy of the
audit log listed first; a log altered in the middle reported as such."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from lifecycle.report.residency import (
    Reach,
    ResidencyReport,
    render_markdown,
    render_table,
    residency_lookup,
    residency_report,
)
from lifecycle.route.audit import Attempt, AuditLog, AuditRecord, read_log

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
ALLOWED = {  # lifecycle.route.policy.ALLOWED_RESIDENCIES
    "self_hosted": frozenset({"self_hosted"}),
    "rented": frozenset({"self_hosted", "rented"}),
    "any": frozenset({"self_hosted", "rented", "external"}),
}
ON_PREM_A = Attempt("chat-a", "vllm", None, "self_hosted", "ok")
ON_PREM_B = Attempt("chat-b", "vllm", None, "self_hosted", "ok")
ON_PREM_A_DOWN = Attempt("chat-a", "vllm", None, "self_hosted", "503")
RENTED = Attempt("chat-eu", "vllm", "eu-west-1", "rented", "ok")
FRONTIER = Attempt("gpt-frontier", "openai", "us", "external", "ok")


def record(i: int, tenant: str, residency: str, *attempts: Attempt) -> AuditRecord:
    return AuditRecord(
        request_id=f"req-{i}",
        tenant=tenant,
        route="chat",
        residency=residency,
        cost_class="pool",
        attempts=attempts,
        model_name="support-bot",
        model_version=3,
        quantization_scheme="FP8_DYNAMIC",
        quantization_config_sha256="cd" * 32,
        input_tokens=100,
        output_tokens=20,
        cost_usd=Decimal("0.0001"),
        prompt_hmac="ab" * 32,
        hmac_key_id="0123456789abcdef",
        received_at=T0 + timedelta(minutes=i),
        finished_at=T0 + timedelta(minutes=i, seconds=1),
        outcome="ok" if attempts and attempts[-1].outcome == "ok" else "rejected",
    )


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """Synthetic traffic: acme (self_hosted) with a failover inside the pool, globex (any) on a frontier API."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        for i in range(12):
            if i % 4 == 3:
                audit.append(record(i, "globex", "any", FRONTIER))
            elif i % 4 == 2:
                audit.append(record(i, "acme", "self_hosted", ON_PREM_A_DOWN, ON_PREM_B))
            else:
                audit.append(record(i, "acme", "self_hosted", ON_PREM_A))
        audit.append(record(12, "acme", "self_hosted"))  # refused before any upstream
    return path


def report_for(path: Path, tenant: str = "acme", since: datetime | None = None) -> ResidencyReport:
    snapshot = read_log(path)
    return residency_report(snapshot.records, tenant, since, residency_lookup(ALLOWED), chain=snapshot.chain)


def test_every_place_reached_is_counted_with_the_rule_that_allowed_it(log: Path) -> None:
    report = report_for(log)
    assert report.clean and report.chain is not None and report.chain.records == 13
    assert (report.requests, report.attempts) == (10, 12)
    rows = {(row.reach.backend, row.attempts, row.answered, row.allowed_by) for row in report.rows}
    assert rows == {
        ("chat-a", 9, 6, "residency self_hosted allows self_hosted"),
        ("chat-b", 3, 3, "residency self_hosted allows self_hosted"),
    }
    text = render_table(report)
    assert "every request stayed where its residency allowed" in text and "chain intact: 13 records" in text
    assert "gpt-frontier" not in text  # another tenant's traffic stays out of acme's report
    globex = report_for(log, "globex")
    assert [(row.reach, row.attempts) for row in globex.rows] == [
        (Reach("gpt-frontier", "openai", "us", "external"), 3)
    ]


def test_since_leaves_out_earlier_requests(log: Path) -> None:
    report = report_for(log, since=T0 + timedelta(minutes=8))
    assert report.requests == 4  # 8, 9, 10 and the refused 12


def test_a_misroute_planted_in_a_copy_of_the_log_is_listed_first(log: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.jsonl"
    shutil.copy(log, copy)
    with AuditLog(copy) as audit:  # the router itself recorded it: the chain holds, the policy does not
        audit.append(record(13, "acme", "self_hosted", ON_PREM_A_DOWN, FRONTIER))
        audit.append(record(14, "acme", "rented", RENTED))
    report = report_for(copy)
    assert report.chain is not None and report.chain.ok and not report.clean
    [violation] = report.violations
    assert (violation.request_id, violation.seq, violation.attempt) == ("req-13", 13, 2)
    assert violation.reach == Reach("gpt-frontier", "openai", "us", "external")
    assert report.rows[0].reach.backend == "gpt-frontier" and report.rows[0].allowed_by is None
    assert report_for(log).clean  # the original is untouched

    for text in (render_table(report), render_markdown(report)):
        assert "1 request attempt(s) reached a backend their residency did not allow" in text
        first_misroute = text.index("req-13")
        assert first_misroute < text.index("Reached") < text.index("chat-a")
        assert text.index("NOT ALLOWED") < first_misroute
    assert "| 13 | 2026-03-01T12:13:00+00:00 | req-13 | self_hosted | 2 | gpt-frontier |" in render_markdown(
        report
    )


def test_a_misroute_edited_into_the_log_is_listed_and_the_edit_is_found(log: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.jsonl"
    lines = log.read_bytes().splitlines()
    obj = json.loads(lines[4])
    obj["attempts"] = [FRONTIER.__dict__]
    lines[4] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    copy.write_bytes(b"".join(line + b"\n" for line in lines))
    report = report_for(copy)
    assert [v.request_id for v in report.violations] == ["req-4"]
    assert report.chain is not None and not report.chain.ok
    assert [(p.kind, p.line) for p in report.chain.problems] == [("edited", 5)]
    text = render_table(report)
    assert "chain BROKEN" in text and "line 5 (seq 4): edited" in text


def test_a_deleted_record_breaks_the_proof(log: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.jsonl"
    lines = log.read_bytes().splitlines()
    copy.write_bytes(b"".join(line + b"\n" for line in lines[:6] + lines[7:]))
    report = report_for(copy)
    assert not report.violations and not report.clean
    assert report.chain is not None and [p.kind for p in report.chain.problems] == ["removed"]
    assert "seq 6 missing" in render_markdown(report)


def test_the_policy_in_force_overrides_what_a_record_claims(log: Path) -> None:
    snapshot = read_log(log)
    backends = {"chat-a": "self_hosted"}  # chat-b is not in the policy any more
    report = residency_report(
        snapshot.records, "acme", None, residency_lookup(ALLOWED, backends), chain=snapshot.chain
    )
    assert {v.reach.backend for v in report.violations} == {"chat-b"} and len(report.violations) == 3


def test_without_a_chain_check_nothing_is_proven(log: Path) -> None:
    report = residency_report(read_log(log).records, "acme", None, residency_lookup(ALLOWED))
    assert not report.clean
    assert "chain NOT CHECKED" in render_table(report)
