"""`lifecycle report ...` end to end on a temporary lifecycle home: the audit log where the router writes it, the
pool and policy files, the markdown and PNG files, an MLflow run in a sqlite store, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from report_world import POLICY, POOL, T0, T_END, plant_misroute, write_traffic
from rich.console import Console
from typer.testing import CliRunner, Result

from lifecycle.cli import report as cli
from lifecycle.serve.routing import AUDIT_LOG

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LIFECYCLE_HOME with the traffic in its audit log; the pool and policy files beside it."""
    home = tmp_path / "home"
    monkeypatch.setenv("LIFECYCLE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, "console_err", Console(width=250, stderr=True))
    write_traffic(home / AUDIT_LOG)
    (tmp_path / "pool.yaml").write_text(json.dumps(POOL.model_dump(mode="json"), indent=1))
    (tmp_path / "routing.yaml").write_text(json.dumps(POLICY.model_dump(mode="json", exclude_defaults=True)))
    return home


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def files(home: Path) -> list[str]:
    return ["--pool", str(home.parent / "pool.yaml"), "--policy", str(home.parent / "routing.yaml")]


def test_cost_end_to_end_with_the_registry_and_an_mlflow_run(home: Path) -> None:
    from lifecycle.registry.models import Registry
    from lifecycle.registry.tracking import Tracker
    from lifecycle.settings import load_settings

    settings = load_settings()
    tracker = Tracker(settings.tracking_uri, settings.artifacts_dir)
    weights = home / "weights"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    registry = Registry(tracker)
    for version in (1, 2, 3):  # the pool pins support-bot v3; training cost $100, the gate $20
        run_id = tracker.start_run("train", f"v{version}", {})
        tags = {"lifecycle.cost.usd": "100.00", "lifecycle.cost.gate.usd": "20.00"} if version == 3 else {}
        registry.register("support-bot", run_id, weights, tags, "", "candidate")

    out = home / "out"
    result = run("cost", "--since", T0.isoformat(), "--until", T_END.isoformat(), *files(home), "--out", out)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "reconciled" in text and "DOES NOT" not in text
    assert "$247.44" in text  # the hand calculation of test_cost.py, with the one-off cost from the registry
    assert "(idle) chat-idle" in text and "IDLE" in text
    markdown = (out / "cost.md").read_text()
    assert "| support |" in markdown and "$247.44" in markdown and "support-bot/3: $120.00" in markdown
    assert (out / "cost.png").read_bytes().startswith(PNG)

    client = tracker.client
    experiment = client.get_experiment_by_name("lifecycle-reports")
    assert experiment is not None
    [logged] = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED" and logged.data.tags["lifecycle.report"] == "cost"
    assert logged.data.metrics["total_usd"] == pytest.approx(247.4391707, abs=1e-6)
    assert logged.data.metrics["reconciled"] == 1.0
    assert logged.data.metrics["recorded_usd"] == pytest.approx(0.366)
    assert {a.path for a in client.list_artifacts(logged.info.run_id)} == {"cost.md", "charts"}
    assert [a.path for a in client.list_artifacts(logged.info.run_id, "charts")] == ["charts/cost.png"]


def test_cost_by_tenant_with_given_one_off_costs(home: Path) -> None:
    out = home / "out"
    result = run("cost", "--by", "tenant", "--since", T0.isoformat(), "--until", T_END.isoformat(), *files(home),
                 "--one-off", "support-bot/3=120", "--no-registry", "--no-mlflow", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "acme" in result.output and "$247.44" in result.output


def test_breakeven_what_if(home: Path) -> None:
    out = home / "out"
    result = run("breakeven", *files(home), "--gpu", "H100", "--price-per-hour", "2.5", "--tokens-per-s", "2500",
                 "--tokens-per-day", "100M", "--input-share", "0.75", "--throughput", "chat-a=1000",
                 "--no-mlflow", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    # H100 at $60 a day: llama-hosted is $0.88/M at any mix: 60 / 0.88 = 68.2M a day; gpt-frontier $6/M: 10.0M
    assert "68.2M/day" in result.output and "10.0M/day" in result.output
    assert "Cheapest at 100.0M tokens a day: H100 x1" in result.output
    assert "chat-a" in result.output  # the pool's deployment at its measured throughput, beside the what-if
    assert (out / "breakeven.png").read_bytes().startswith(PNG)
    assert "68.2M/day" in (out / "breakeven.md").read_text()


def test_residency_lists_the_planted_misroute_first_and_signs_the_export(home: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    from lifecycle.route.export import verify_export

    copy = tmp_path / "copy.jsonl"
    plant_misroute(home / AUDIT_LOG, copy)
    private = Ed25519PrivateKey.generate()
    key = tmp_path / "signing.pem"
    key.write_bytes(private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    out, export = home / "out", tmp_path / "regulated.export.json"
    result = run("residency", "--tenant", "regulated", "--audit", copy, "--export", export, "--key", key,
                 "--no-mlflow", "--out", out)  # fmt: skip
    assert result.exit_code == 1, result.output  # a request went where it must not
    text = result.output
    assert "1 request attempt(s) reached a backend their residency did not allow" in text
    assert text.index("NOT ALLOWED") < text.index("req-96") < text.index("Reached")
    markdown = (out / "residency.md").read_text()
    assert markdown.index("## NOT ALLOWED") < markdown.index("req-96") < markdown.index("## Reached")
    assert (out / "residency.png").read_bytes().startswith(PNG)
    checked = verify_export(export, private.public_key())
    assert checked.ok and checked.records == 1 and checked.chain_ok

    judged = run("residency", "--tenant", "regulated", "--audit", copy, "--policy", home.parent / "routing.yaml",
                 "--no-mlflow", "--out", out)  # fmt: skip
    assert judged.exit_code == 1 and "req-96" in judged.output  # the policy in force says the same

    clean = run("residency", "--tenant", "acme", "--no-mlflow", "--out", out)  # the log the router wrote
    assert clean.exit_code == 0, clean.output
    assert (
        "every request stayed where its residency allowed" in clean.output and "chain intact" in clean.output
    )


@pytest.mark.parametrize(
    ("change", "kind"), [("edit", "line 21 (seq 20): edited"), ("delete", "line 21 (seq 21): removed")]
)
def test_a_record_deleted_or_edited_in_the_middle_is_detected(
    home: Path, tmp_path: Path, change: str, kind: str
) -> None:
    lines = (home / AUDIT_LOG).read_bytes().splitlines()
    if change == "edit":  # fewer tokens, so a smaller bill
        obj = json.loads(lines[20])
        obj["output_tokens"] = 1
        lines[20] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    else:
        del lines[20]
    copy = tmp_path / "altered.jsonl"
    copy.write_bytes(b"".join(line + b"\n" for line in lines))
    result = run("residency", "--tenant", "acme", "--audit", copy, "--no-mlflow", "--out", home / "out")
    assert result.exit_code == 1, result.output
    assert "chain BROKEN" in result.output and kind in result.output
    costed = run("cost", "--audit", copy, *files(home), "--no-registry", "--no-mlflow", "--out", home / "out")
    assert costed.exit_code == 0 and "Audit log: chain BROKEN" in costed.output  # the bill says it too


def test_ops_from_saved_metrics_and_status(home: Path, tmp_path: Path) -> None:
    from test_ops import STATUS, scrape

    metrics = tmp_path / "chat-a-0.prom"
    metrics.write_text(scrape("chat-a", hits=250, queries=1000, kv=0.5, waiting=3, ttfts=[0.05] * 4))
    status = tmp_path / "status.json"
    status.write_text(json.dumps(STATUS))
    out = home / "out"
    result = run("ops", "--metrics", f"chat-a={metrics}", "--status", status, "--no-mlflow", "--out", out)
    assert result.exit_code == 0, result.output
    assert "25.0%" in result.output and "50.0%" in result.output  # hit rate, KV-cache use
    assert "chat-b" in result.output  # restarts and an OOM kill, no metrics
    assert "CUDA out of memory" in (out / "ops.md").read_text()
    assert (out / "ops.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cost", "--by", "model"], "--by 'model': one of route, tenant, version, cost-class"),
        (["cost", "--since", "yesterday", "--no-registry"], "--since 'yesterday': expected an ISO date"),
        (["cost", "--audit", "/nonexistent/audit.jsonl"], "no audit log here"),
        (["cost", "--one-off", "support-bot=12", "--no-registry"], "expected NAME/VERSION=DOLLARS"),
        (["breakeven", "--gpu", "H100", "--tokens-per-day", "lots"], "the what-if needs --gpu, --price-per-hour"),
        (["breakeven", "--gpu", "H100", "--price-per-hour", "2", "--tokens-per-s", "9", "--tokens-per-day", "lots"],
         "not a token volume: 'lots'"),
        (["residency", "--tenant", "acme", "--export", "x.json"], "--export needs --key"),
        (["ops"], "no pool runs here"),
        (["ops", "--metrics", "chat-a"], "expected NAME=VALUE"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(home: Path, args: list[str], message: str) -> None:
    extra = files(home) if args[0] in ("cost", "breakeven") else []
    result = run(*args, *extra, "--no-mlflow")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_times_absolute_and_relative() -> None:
    from datetime import datetime, timezone

    now = datetime(2026, 3, 8, 12, 0, tzinfo=timezone.utc)
    assert cli._time("7d", "--since", now) == datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    assert cli._time("90m", "--since", now) == datetime(2026, 3, 8, 10, 30, tzinfo=timezone.utc)
    assert cli._time("2026-03-01", "--since") == datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert cli._time("2026-03-01T01:00:00+01:00", "--since") == datetime(2026, 3, 1, tzinfo=timezone.utc)


def test_help_imports_nothing_heavy() -> None:
    probe = (
        "import sys\nfrom lifecycle.cli.report import app\n"
        "for args in (['--help'], ['cost', '--help'], ['breakeven', '--help']):\n"
        "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
        "print(' '.join(m for m in ('numpy', 'mlflow', 'matplotlib', 'cryptography') if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stderr.split() == []
