"""The audit log: a chain that names the line where a record was removed, edited, reordered or inserted; writers
in threads and processes that keep one chain; a torn tail found and moved aside; signed exports."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from lifecycle.errors import AuditLogError, UserInputError
from lifecycle.route.audit import Attempt, AuditLog, AuditRecord, encode, read_log, verify_chain
from lifecycle.route.chain import GENESIS, ChainHead, line_sha256
from lifecycle.route.export import export, verify_export

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
HMAC = "ab" * 32


def record(
    i: int, tenant: str = "acme", backend: str = "chat-a", residency: str = "self_hosted"
) -> AuditRecord:
    return AuditRecord(
        request_id=f"req-{i}",
        tenant=tenant,
        route="chat",
        residency="self_hosted",
        cost_class="pool",
        attempts=(Attempt(backend, "vllm", None, residency, "ok"),),
        model_name="support-bot",
        model_version=3,
        quantization_scheme="FP8_DYNAMIC",
        quantization_config_sha256="cd" * 32,
        input_tokens=100 + i,
        output_tokens=20,
        cost_usd=Decimal("0.000123"),
        prompt_hmac=HMAC,
        hmac_key_id="0123456789abcdef",
        received_at=T0 + timedelta(seconds=i),
        finished_at=T0 + timedelta(seconds=i, milliseconds=300),
        outcome="ok",
    )


def write_log(path: Path, n: int) -> list[bytes]:
    with AuditLog(path) as log:
        for i in range(n):
            log.append(record(i))
    return path.read_bytes().splitlines()


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_records_chain_from_genesis_and_read_back_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, 5)
    objs = [json.loads(line) for line in lines]
    assert [o["seq"] for o in objs] == [0, 1, 2, 3, 4]
    assert objs[0]["prev"] == GENESIS
    assert all(objs[i]["prev"] == line_sha256(lines[i - 1]) for i in range(1, 5))
    report = verify_chain(path)
    assert report.ok and report.records == 5
    assert report.head == ChainHead(4, line_sha256(lines[-1]))
    snapshot = read_log(path)
    assert [logged.record for logged in snapshot.records] == [record(i) for i in range(5)]
    assert "prompt_hmac" in objs[0] and objs[0]["backend"] == "chat-a" and objs[0]["cost_usd"] == "0.000123"


def test_a_record_removed_in_the_middle_is_found_and_placed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, 6)
    rewrite(path, lines[:2] + lines[3:])
    report = verify_chain(path)
    assert not report.ok
    [problem] = report.problems
    assert (problem.kind, problem.line, problem.seq) == ("removed", 3, 3)
    assert "seq 2 missing between line 2 and line 3" in problem.detail


def test_the_first_record_removed_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, 3)
    rewrite(path, lines[1:])
    [problem] = verify_chain(path).problems
    assert (problem.kind, problem.line) == ("removed", 1)


def test_a_record_edited_in_the_middle_is_found_and_placed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, 6)
    obj = json.loads(lines[2])
    obj["attempts"][0]["backend"] = "somewhere-else"
    lines[2] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    rewrite(path, lines)
    report = verify_chain(path)
    [problem] = report.problems
    assert (problem.kind, problem.line, problem.seq) == ("edited", 3, 2)
    assert "changed after it was written" in problem.detail


def test_an_edited_sequence_number_is_one_problem_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, 5)
    lines[2] = lines[2].replace(b'"seq":2', b'"seq":7')
    rewrite(path, lines)
    problems = verify_chain(path).problems
    assert {(p.kind, p.line) for p in problems} == {("edited", 3)}


def test_reordered_records_are_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, 6)
    lines[2], lines[3] = lines[3], lines[2]
    rewrite(path, lines)
    problems = verify_chain(path).problems
    assert {p.kind for p in problems} == {"reordered"}
    assert sorted(p.line for p in problems) == [3, 4]


@pytest.mark.parametrize("forgery", ["copy", "linked", "unlinked"])
def test_a_record_inserted_in_the_middle_is_found_and_placed(tmp_path: Path, forgery: str) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, 6)
    if forgery == "copy":
        fake = lines[1]
    elif forgery == "linked":  # a forger who knows the format: right link, right seq
        fake = encode(record(99, backend="external-api"), 2, line_sha256(lines[1]))
    else:
        fake = encode(record(99, backend="external-api"), 2, "ee" * 32)
    rewrite(path, [*lines[:2], fake, *lines[2:]])
    report = verify_chain(path)
    assert not report.ok
    assert [(p.kind, p.line) for p in report.problems] == [("inserted", 3)]


@pytest.mark.parametrize("change", ["remove", "edit", "swap", "copy"])
def test_any_single_change_before_the_last_record_is_found_near_it(tmp_path: Path, change: str) -> None:
    path = tmp_path / "audit.jsonl"
    original = write_log(path, 8)
    for at in range(7):  # the last record has no successor to vouch for it: that needs an anchor
        lines = list(original)
        if change == "remove":
            del lines[at]
        elif change == "edit":
            lines[at] = lines[at].replace(b'"output_tokens":20', b'"output_tokens":21')
        elif change == "swap":
            lines[at], lines[at + 1] = lines[at + 1], lines[at]
        else:
            lines.insert(at + 1, original[at])
        rewrite(path, lines)
        report = verify_chain(path)
        assert not report.ok, (change, at)
        assert report.problems[0].line in (at + 1, at + 2), (change, at, report.problems)


def test_a_truncated_or_rewritten_tail_needs_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, 5)
    anchor = verify_chain(path).head
    assert anchor is not None
    rewrite(path, lines[:3])
    assert verify_chain(path).ok  # a shorter chain is still a chain
    [problem] = verify_chain(path, anchor=anchor).problems
    assert problem.kind == "anchor" and "truncated" in problem.detail
    obj = json.loads(lines[4])
    obj["output_tokens"] = 1
    rewrite(path, [*lines[:4], json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()])
    [problem] = verify_chain(path, anchor=anchor).problems
    assert (problem.kind, problem.line) == ("anchor", 5)


def test_a_torn_tail_is_reported_refused_or_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    torn = b'{"attempts":[{"backend":"chat-a","outc'
    with path.open("ab") as fh:
        fh.write(torn)
    report = verify_chain(path)
    assert report.records == 3 and [p.kind for p in report.problems] == ["torn_tail"]
    assert report.problems[0].line == 4
    with pytest.raises(AuditLogError, match="after the last complete record"):
        AuditLog(path, repair=False)
    assert path.read_bytes().endswith(torn)  # refused: nothing touched
    with AuditLog(path) as log:
        logged = log.append(record(3))
    assert logged.seq == 3
    aside = list(tmp_path.glob("audit.jsonl.torn.*"))
    assert [p.read_bytes() for p in aside] == [torn]
    assert verify_chain(path).ok and verify_chain(path).records == 4


def test_a_tail_torn_by_another_writer_is_repaired_at_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.append(record(0))
        with path.open("ab") as fh:  # another process died in the middle of its write
            fh.write(b'{"seq":1,"prev":"ab')
        log.append(record(1))
    report = verify_chain(path)
    assert report.ok and report.records == 2


def test_a_last_line_that_is_not_a_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"hello\n")
    with pytest.raises(AuditLogError, match="not an audit record"):
        AuditLog(path)
    assert path.read_bytes() == b"hello\n"


def test_threads_and_two_handles_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    logs = [AuditLog(path, durability="flush"), AuditLog(path, durability="flush")]
    start = threading.Barrier(8)

    def write(worker: int) -> None:
        start.wait()
        for i in range(40):
            logs[worker % 2].append(record(worker * 1000 + i))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for log in logs:
        log.close()
    report = verify_chain(path)
    assert report.ok, report.summary()
    assert report.records == 320
    assert {logged.record.request_id for logged in read_log(path).records} == {
        f"req-{w * 1000 + i}" for w in range(8) for i in range(40)
    }


WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_audit import record
from lifecycle.route.audit import AuditLog
go = Path({go!r})
log = AuditLog(Path({path!r}))
while not go.exists():
    time.sleep(0.001)
for i in range({n}):
    log.append(record({base} + i, tenant={tenant!r}))
log.close()
"""


def test_two_processes_keep_one_chain(tmp_path: Path) -> None:
    path, go = tmp_path / "audit.jsonl", tmp_path / "go"
    tests = str(Path(__file__).parent)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER.format(tests=tests, go=str(go), path=str(path), n=150, base=base, tenant=tenant),
            ]
        )
        for base, tenant in ((0, "proc-a"), (1000, "proc-b"))
    ]
    time.sleep(0.5)
    go.touch()
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0]
    report = verify_chain(path)
    assert report.ok, report.summary()
    assert report.records == 300
    tenants = [logged.record.tenant for logged in read_log(path).records]
    switches = sum(a != b for a, b in zip(tenants, tenants[1:], strict=False))
    assert switches > 1, "the two writers never overlapped: the test proved nothing"


_INHERITED: dict[str, AuditLog] = {}
FORKED = 300


def _forked_writer(go: Any) -> None:
    log = _INHERITED["log"]
    go.wait()
    for i in range(FORKED):
        log.append(record(10_000 + i, tenant="child"))
    os._exit(0)


def test_a_forked_child_takes_its_own_lock(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, durability="flush")
    log.append(record(0))
    _INHERITED["log"] = log
    context = multiprocessing.get_context("fork")
    go = context.Event()
    child = context.Process(target=_forked_writer, args=(go,))
    child.start()
    go.set()
    for i in range(1, FORKED + 1):
        log.append(record(i))
    child.join(timeout=60)
    assert child.exitcode == 0
    log.append(record(FORKED + 1))
    log.close()
    report = verify_chain(path)
    assert report.ok, report.summary()
    assert report.records == 2 * FORKED + 2


def test_records_refuse_text_where_a_name_belongs() -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        AuditRecord(**{**record(0).__dict__, "prompt_hmac": "what is the capital of France?"})
    with pytest.raises(ValueError, match="short name"):
        AuditRecord(**{**record(0).__dict__, "error_type": "upstream said: your prompt 'hello' is invalid"})
    with pytest.raises(ValueError, match="short name"):
        Attempt("a", "vllm", None, "self_hosted", "bad request: text of the prompt")


def test_an_hmac_export_verifies_and_any_change_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for i in range(6):
            log.append(record(i, tenant="acme" if i % 2 else "globex"))
    key = b"s" * 32
    out = export(path, T0 + timedelta(seconds=2), "acme", key)
    report = verify_export(out, key)
    assert report.ok and report.records == 2 and report.chain_ok and report.tenant == "acme"
    assert report.signed_by.startswith("hmac-sha256:")
    document = json.loads(out.read_text())
    assert [json.loads(e["line"])["request_id"] for e in document["records"]] == ["req-3", "req-5"]
    assert document["chain"]["head_seq"] == 5

    assert not verify_export(out, b"t" * 32).ok
    tampered = out.read_text().replace('\\"output_tokens\\":20', '\\"output_tokens\\":2')
    assert tampered != out.read_text()
    out.write_text(tampered)
    problems = verify_export(out, key).problems
    assert any("signature" in p for p in problems) and any("does not match its sha256" in p for p in problems)
    with pytest.raises(UserInputError, match="16 bytes"):
        export(path, None, "acme", b"short")


def test_an_ed25519_export_verifies_with_the_public_key_only(tmp_path: Path) -> None:
    ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    private = ed25519.Ed25519PrivateKey.generate()
    out = export(path, None, "acme", private, out=tmp_path / "acme.json")
    assert verify_export(out, private.public_key()).ok
    assert not verify_export(out, ed25519.Ed25519PrivateKey.generate().public_key()).ok
    document = json.loads(out.read_text())
    document["chain"]["ok"] = False
    out.write_text(json.dumps(document))
    assert not verify_export(out, private.public_key()).ok


def test_an_export_of_a_broken_log_says_so(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path, 5)
    rewrite(path, lines[:2] + lines[3:])
    out = export(path, None, "acme", b"k" * 32)
    report = verify_export(out, b"k" * 32)
    assert report.ok and not report.chain_ok  # the file is authentic; what it reports is a broken chain
    assert "removed" in json.loads(out.read_text())["chain"]["problems"][0]
