"""The reports over an audit log the real router wrote: seeded traffic from three tenants over real HTTP to stand-in
pool replicas, a hosted and a frontier upstream, then the cost report reconciled and checked against the tokens
the stand-ins billed, the break-even volume against a hand calculation, a misroute planted in a copy of the log,
and copies with a record removed or edited."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from report_world import FRONTIER, HOSTED, POOL, PRICES, plant_misroute
from rich.console import Console
from test_report_cli import run

from lifecycle.cli import report as cli
from lifecycle.report.breakeven import Hosted, SelfHosted, break_even
from lifecycle.report.cost import CENT, MICRO, cents, cost_report
from lifecycle.report.residency import residency_lookup, residency_report
from lifecycle.route.audit import AuditLog, AuditRecord, read_log
from lifecycle.route.load import load_policy
from lifecycle.route.policy import ALLOWED_RESIDENCIES
from lifecycle.route.server import Router
from lifecycle.serve.front import Backend

sys.path.insert(0, str(Path(__file__).parents[1] / "route"))  # the router tests' stand-ins and builders
from route_world import policy, tenant  # noqa: E402
from upstream_world import Seen, StandIn  # noqa: E402

HMAC_KEY = b"report-test-hmac-key-32-bytes!!!"
KEYS = {"acme": "acme-key", "globex": "globex-key", "regulated": "reg-key"}
BILLED_OUTPUT = {"llama-hosted": 40_000, "gpt-frontier": 30_000}  # completion tokens each upstream reports
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "seven", "wizards", "box")
MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Traffic:
    audit: Path
    pool: Path
    policy: Path
    records: list[AuditRecord]
    seen: dict[str, list[Seen]]  # upstream name -> the completions it was sent (and billed: none failed)
    sent: dict[str, int]  # cost class -> requests sent that ended there ("none": refused and audited)


def _mix(rng: random.Random, i: int) -> tuple[str, str, str, dict[str, object]]:
    """Tenant, path, expected cost class and body of the i-th request of the seeded mix."""
    who = rng.choice(sorted(KEYS))
    route = "support" if who == "regulated" else rng.choice(["support", "bulk", "frontier"])
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
    body: dict[str, object] = {"model": route}
    if rng.random() < 0.5:
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": text}]
    else:
        path, body["prompt"] = "/v1/completions", text
    if rng.random() < 0.35:
        body["stream"] = True
        if route != "support" or i % 2:  # pool streams without usage are counted by their pieces
            body["stream_options"] = {"include_usage": True}
    return who, path, {"support": "pool", "bulk": "hosted", "frontier": "frontier"}[route], body


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    """The pool's chat-a (two stand-in replicas) behind the real router, with llama-hosted and gpt-frontier."""
    folder = tmp_path_factory.mktemp("through-the-router")
    hosted, frontier = StandIn("llama-hosted", key="sk-hosted"), StandIn("gpt-frontier", key="sk-frontier")
    hosted.bill_output, frontier.bill_output = BILLED_OUTPUT["llama-hosted"], BILLED_OUTPUT["gpt-frontier"]
    replicas = [StandIn("chat-a-0"), StandIn("chat-a-1")]
    the_policy = policy(
        {"support": ["chat-a", "llama-hosted"], "bulk": ["llama-hosted"], "frontier": ["gpt-frontier"]},
        (
            HOSTED.model_copy(update={"base_url": hosted.base_url, "api_key_env": "HOSTED_KEY"}),
            FRONTIER.model_copy(update={"base_url": frontier.base_url, "api_key_env": "FRONTIER_KEY"}),
        ),
        (
            tenant("acme", keys=(KEYS["acme"],)),
            tenant("globex", keys=(KEYS["globex"],)),
            tenant("regulated", "self_hosted", ("pool",), keys=(KEYS["regulated"],)),
        ),
        timeouts={"connect_s": 1, "first_byte_s": 2, "total_s": 10},
        health={"interval_s": 0.2, "timeout_s": 0.2, "unhealthy_after": 1, "healthy_after": 1},
    )
    pool_path, policy_path, audit_path = folder / "pool.yaml", folder / "routing.yaml", folder / "audit.jsonl"
    pool_path.write_text(json.dumps(POOL.model_dump(mode="json")))
    policy_path.write_text(json.dumps(the_policy.model_dump(mode="json", exclude_defaults=True)))
    router = Router(
        load_policy(policy_path),
        audit=AuditLog(audit_path, durability="flush"),
        hmac_key=HMAC_KEY,
        env={"HOSTED_KEY": "sk-hosted", "FRONTIER_KEY": "sk-frontier"},
        pool=POOL,
        watch_every_s=None,
    )
    router.set_routes({"chat-a": [Backend(r.root, "chat-a", f"chat-a/{i}") for i, r in enumerate(replicas)]})
    router.start()
    client = httpx.Client(base_url=router.url, timeout=10)
    sent = {"pool": 0, "hosted": 0, "frontier": 0, "none": 0}

    def post(who: str, path: str, body: dict[str, object]) -> httpx.Response:
        return client.post(path, json=body, headers={"Authorization": f"Bearer {KEYS.get(who, who)}"})

    try:
        rng = random.Random(13)
        for i in range(36):
            who, path, cost_class, body = _mix(rng, i)
            answer = post(who, path, body)
            assert answer.status_code == 200, answer.text
            assert "[DONE]" in answer.text if body.get("stream") else answer.json()["usage"]
            sent[cost_class] += 1
        for r in replicas:  # the whole deployment fails before its first byte: the route falls back to hosted
            r.behaviour = "status:503"
        spill = [{"role": "user", "content": "fall back to the hosted route please"}]
        answer = post("acme", "/v1/chat/completions", {"model": "support", "messages": spill})
        assert answer.status_code == 200 and answer.json()["model"] == HOSTED.model, answer.text
        sent["hosted"] += 1
        for r in replicas:
            r.behaviour = "ok"
        refusals = [
            ("regulated", "frontier", 403),
            ("regulated", "bulk", 403),
            ("globex", "no-such-route", 404),
        ]
        for who, route, status in refusals:  # refused after the tenant is known: audited, no attempt
            assert post(who, "/v1/completions", {"model": route, "prompt": "x"}).status_code == status
            sent["none"] += 1
        assert post("nobody", "/v1/completions", {"model": "bulk", "prompt": "x"}).status_code == 401
        assert router.wait_settled()
    finally:
        client.close()
        router.stop()
        router.audit.close()
        for s in (hosted, frontier, *replicas):
            s.stop()
    records = [logged.record for logged in read_log(audit_path).records]
    assert len(records) == sum(sent.values()) == 40
    seen = {"llama-hosted": hosted.completions(), "gpt-frontier": frontier.completions()}
    yield Traffic(audit_path, pool_path, policy_path, records, seen, sent)


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("LIFECYCLE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, "console_err", Console(width=250, stderr=True))
    return home


def files(traffic: Traffic) -> list[str | Path]:
    return ["--audit", traffic.audit, "--pool", traffic.pool, "--policy", traffic.policy]


def billed(
    seen: list[Seen], output_tokens: int, input_price: str, output_price: str
) -> tuple[int, int, Decimal]:
    """Tokens an upstream stand-in reported (a word of the prompt is a token to it) and their price, by hand."""
    prompts = [
        " ".join(m["content"] for m in s.body["messages"]) if "messages" in s.body else s.body["prompt"]
        for s in seen
    ]
    tokens_in, tokens_out = sum(len(p.split()) for p in prompts), output_tokens * len(seen)
    return (
        tokens_in,
        tokens_out,
        (tokens_in * Decimal(input_price) + tokens_out * Decimal(output_price)) / MILLION,
    )


def test_the_cost_report_reconciles_with_the_records_and_the_stand_ins_bills(
    traffic: Traffic, cli_home: Path
) -> None:
    hosted = billed(traffic.seen["llama-hosted"], 40_000, "0.88", "0.88")
    frontier = billed(traffic.seen["gpt-frontier"], 30_000, "3", "15")
    assert len(traffic.seen["llama-hosted"]) == traffic.sent["hosted"]  # the fallback's call included
    assert len(traffic.seen["gpt-frontier"]) == traffic.sent["frontier"]
    [fallback] = [r for r in traffic.records if len(r.attempts) > 1]  # both replicas tried, then hosted
    assert [(a.backend, a.outcome) for a in fallback.attempts] == [
        ("chat-a", "503"),
        ("chat-a", "503"),
        ("llama-hosted", "ok"),
    ]
    assert (fallback.cost_class, fallback.model_name) == ("hosted", None)
    recorded = sum((r.cost_usd for r in traffic.records), Decimal(0))
    # each record holds its cost as the Decimal of a float: within a micro-dollar of the exact price
    assert abs(recorded - hosted[2] - frontier[2]) < MICRO * len(traffic.records)

    report = cost_report(traffic.records, POOL, PRICES, by="cost-class")
    rec = report.reconciliation
    assert rec.ok and not rec.mismatches and not rec.unpriced and rec.recorded_usd == recorded
    assert report.total.metered.total.quantize(CENT) == recorded.quantize(CENT)
    rows = {row.key: row for row in report.rows}
    assert {key: row.requests for key, row in rows.items()} == {k: n for k, n in traffic.sent.items() if n}
    for key, (tokens_in, tokens_out, dollars) in (("hosted", hosted), ("frontier", frontier)):
        row = rows[key]
        assert (row.input_tokens, row.output_tokens, row.metered.total) == (tokens_in, tokens_out, dollars)
        assert not row.gpu.total and not row.one_off.total
    # The pool: chat-a's 2 x 1 GPU at $2.50 and idle chat-idle's 1 x 2 GPUs at $4, over the period's span
    span = max(r.finished_at for r in traffic.records) - min(r.received_at for r in traffic.records)
    gpu = Decimal(str(span.total_seconds())) / 3600 * (2 * 1 * Decimal("2.5") + 1 * 2 * 4)
    assert rows["pool"].metered.total == 0 and abs(rows["pool"].gpu.total - gpu) < Decimal("1e-12")
    assert abs(report.total.total.total - (hosted[2] + frontier[2] + gpu)) < Decimal("1e-12")

    out = cli_home / "cost"
    result = run("cost", "--by", "cost-class", *files(traffic), "--no-registry", "--no-mlflow", "--out", out)
    assert result.exit_code == 0, result.output
    assert "reconciled" in result.output and "DOES NOT" not in result.output
    assert f"per-request costs {cents(recorded)}: reconciled" in result.output
    assert "chain intact: 40 records" in result.output
    markdown = (out / "cost.md").read_text()
    for key, (tokens_in, tokens_out, dollars) in (("hosted", hosted), ("frontier", frontier)):
        [line] = [line for line in markdown.splitlines() if line.startswith(f"| {key} |")]
        assert f"| {tokens_in:,} | {tokens_out:,} | {cents(dollars)} |" in line


def test_the_break_even_volume_matches_a_hand_calculation(traffic: Traffic, cli_home: Path) -> None:
    # chat-a: one GPU a replica at $2.50 an hour is $60 a day; at 2,500 tokens/s and half its peak a day, a
    # replica serves 2,500 x 86,400 x 0.5 = 108M tokens. llama-hosted is $0.88 per million at any mix, so the
    # pool beats it from 60 / 0.88 x 1M = 68,181,818 tokens a day; a second replica (past 108M) costs $120 a day,
    # 120 / 0.88 x 1M = 136,363,636 tokens to pay for, so it beats hosted for good above that.
    option = SelfHosted("chat-a", Decimal(2500), Decimal("2.5"), 1, Decimal("0.5"))
    assert POOL.deployment("chat-a") is not None and POOL.deployment("chat-a").price_per_gpu_hour == 2.5
    tokens_in = sum(r.input_tokens for r in traffic.records)
    share = Decimal(tokens_in) / (tokens_in + sum(r.output_tokens for r in traffic.records))
    hosted = break_even(option, Hosted("llama-hosted", "hosted", Decimal("0.88"), Decimal("0.88")), share)
    assert hosted.beats_from is not None and hosted.always_beats_above is not None
    assert hosted.beats_from.quantize(Decimal(1)) == 68_181_818
    assert hosted.always_beats_above.quantize(Decimal(1)) == 136_363_636
    # gpt-frontier at this traffic's mix: $3 per million input tokens, $15 per million output
    per_token = (share * 3 + (1 - share) * 15) / MILLION
    frontier = break_even(option, Hosted("gpt-frontier", "frontier", Decimal(3), Decimal(15)), share)
    assert frontier.beats_from == frontier.always_beats_above == 60 / per_token  # well inside one replica

    out = cli_home / "breakeven"
    result = run("breakeven", *files(traffic), "--throughput", "chat-a=2500", "--no-mlflow", "--out", out)
    assert result.exit_code == 0, result.output
    assert "68.2M/day" in result.output and "136.4M/day" in result.output
    assert f"{60 / per_token / 1_000_000:.1f}M/day" in result.output


def test_a_misroute_planted_in_a_copy_is_listed_first(
    traffic: Traffic, cli_home: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "misrouted.jsonl"
    plant_misroute(traffic.audit, copy)  # a regulated request that failed over to gpt-frontier, chain intact
    lookup = residency_lookup(ALLOWED_RESIDENCIES)
    snapshot = read_log(copy)
    report = residency_report(snapshot.records, "regulated", None, lookup, chain=snapshot.chain)
    assert snapshot.chain.ok and not report.clean
    [violation] = report.violations
    assert (violation.request_id, violation.seq, violation.attempt) == ("req-96", 40, 2)
    assert report.rows[0].reach.backend == "gpt-frontier" and report.rows[0].allowed_by is None
    assert {row.reach.backend for row in report.rows[1:]} == {"chat-a"}
    original = read_log(traffic.audit)
    clean = residency_report(original.records, "regulated", None, lookup, chain=original.chain)
    assert clean.clean and clean.requests == sum(r.tenant == "regulated" for r in traffic.records)

    out = cli_home / "residency"
    result = run("residency", "--tenant", "regulated", "--audit", copy, "--no-mlflow", "--out", out)
    assert result.exit_code == 1, result.output
    text = result.output
    assert text.index("NOT ALLOWED") < text.index("req-96") < text.index("Reached") < text.index("chat-a")
    judged = run("residency", "--tenant", "regulated", "--audit", copy, "--policy", traffic.policy,
                 "--no-mlflow", "--out", out)  # fmt: skip
    assert judged.exit_code == 1 and "req-96" in judged.output  # the policy the router ran says the same
    for who in ("regulated", "acme"):
        untouched = run("residency", "--tenant", who, "--audit", traffic.audit, "--no-mlflow", "--out", out)
        assert untouched.exit_code == 0, untouched.output
        assert "every request stayed where its residency allowed" in untouched.output
        assert "NOT ALLOWED" not in untouched.output and "chain intact: 40 records" in untouched.output


@pytest.mark.parametrize("change", ["delete", "edit"])
def test_a_record_removed_or_edited_in_the_middle_is_detected(
    traffic: Traffic, cli_home: Path, tmp_path: Path, change: str
) -> None:
    lines = traffic.audit.read_bytes().splitlines()
    # the middle-most request that reached gpt-frontier: an edit of its tokens changes the bill
    index = min(
        (i for i, line in enumerate(lines) if json.loads(line)["cost_class"] == "frontier"),
        key=lambda i: abs(i - len(lines) // 2),
    )
    request_id = json.loads(lines[index])["request_id"]
    if change == "delete":
        del lines[index]
        expected = f"line {index + 1} (seq {index + 1}): removed"
    else:  # one byte: the last digit of its input tokens
        at = lines[index].index(b'"input_tokens":') + len(b'"input_tokens":')
        while lines[index][at + 1 : at + 2].isdigit():
            at += 1
        digit = lines[index][at] - ord("0")
        lines[index] = lines[index][:at] + str((digit + 1) % 10).encode() + lines[index][at + 1 :]
        expected = f"line {index + 1} (seq {index}): edited"
    copy = tmp_path / f"{change}.jsonl"
    copy.write_bytes(b"".join(line + b"\n" for line in lines))

    snapshot = read_log(copy)
    assert not snapshot.chain.ok and any(str(p).startswith(expected) for p in snapshot.chain.problems)
    report = cost_report([logged.record for logged in snapshot.records], POOL, PRICES)
    mismatched = [m.request_id for m in report.reconciliation.mismatches]
    assert mismatched == ([request_id] if change == "edit" else [])  # the edited bill no longer prices

    out = cli_home / change
    result = run("residency", "--tenant", json.loads(traffic.audit.read_bytes().splitlines()[index])["tenant"],
                 "--audit", copy, "--no-mlflow", "--out", out)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "chain BROKEN" in result.output and expected in result.output
    costed = run("cost", "--audit", copy, "--pool", traffic.pool, "--policy", traffic.policy, "--no-registry",
                 "--no-mlflow", "--out", out)  # fmt: skip
    assert costed.exit_code == 0 and "Audit log: chain BROKEN" in costed.output, costed.output
