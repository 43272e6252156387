"""`lifecycle jobs list|logs|cancel` over the stand-in SDK."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from sky_standin import Scenario, StandInSky, stand_in_client
from typer.testing import CliRunner

from lifecycle.cli import jobs
from lifecycle.launch import sky_client

TASK = "resources:\n  accelerators: H100:1\nrun: lifecycle worker train recipe.yaml\n"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandInSky:
    client, stand_in = stand_in_client(tmp_path, Scenario(exit_code=100, final_status="RUNNING"))
    monkeypatch.setattr(sky_client, "SkyClient", lambda: client)
    monkeypatch.setattr(jobs, "console", Console(width=200))
    task = tmp_path / "task.yaml"
    task.write_text(TASK)
    client.launch_managed(task, "lifecycle-demo-20261128-101010", secrets={})
    client.launch_managed(task, "someone-elses-job", secrets={})
    return stand_in


def test_list_shows_lifecycle_jobs(fake: StandInSky) -> None:
    result = CliRunner().invoke(jobs.app, ["list"])
    assert result.exit_code == 0, result.output
    assert "lifecycle-demo-20261128-101010" in result.output and "RUNNING" in result.output
    assert "someone-elses-job" not in result.output
    assert "someone-elses-job" in CliRunner().invoke(jobs.app, ["list", "--all"]).output


def test_list_json(fake: StandInSky) -> None:
    result = CliRunner().invoke(jobs.app, ["list", "--json"])
    rows = json.loads(result.output)
    assert [(r["job_id"], r["status"]) for r in rows] == [(1, "RUNNING")]


def test_logs_exit_with_the_jobs_code(fake: StandInSky) -> None:
    result = CliRunner().invoke(jobs.app, ["logs", "1"])
    assert result.exit_code == 100
    assert fake.called("jobs.tail_logs")[0]["job_id"] == 1


def test_cancel(fake: StandInSky) -> None:
    result = CliRunner().invoke(jobs.app, ["cancel", "1", "--yes"])
    assert result.exit_code == 0, result.output
    assert fake.jobs_table[1]["status"] == "CANCELLED"
    again = CliRunner().invoke(jobs.app, ["cancel", "1", "--yes"])
    assert "already ended: CANCELLED" in again.output


def test_list_with_no_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = stand_in_client(tmp_path, Scenario(no_controller=True))
    monkeypatch.setattr(sky_client, "SkyClient", lambda: client)
    result = CliRunner().invoke(jobs.app, ["list"])
    assert result.exit_code == 0 and "no managed jobs" in result.output
