"""The pool's CI workflows (.github/workflows/pool-*.yml) run real commands: every `lifecycle` command line in them
names a command that exists, with options it has (`lifecycle CMD --help` answers), and every `make` target is in
the Makefile. So renaming a command or an option breaks this test, not the next promotion."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from ruamel.yaml import YAML

from lifecycle.cli.app import app

REPO = Path(__file__).parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
FILES = ("pool-verify.yml", "pool-apply.yml")
LIFECYCLE = re.compile(r"(?:^|\s)(?:\.venv/bin/)?lifecycle\s+(.*)$")


def load(name: str) -> dict:  # type: ignore[type-arg]
    data = YAML(typ="safe").load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    return data


def run_lines(workflow: dict) -> list[str]:  # type: ignore[type-arg]
    return [
        line.strip()
        for job in workflow["jobs"].values()
        for step in job["steps"]
        for line in str(step.get("run", "")).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def lifecycle_calls(workflow: dict) -> list[tuple[list[str], list[str]]]:  # type: ignore[type-arg]
    """(command path, options) of each `lifecycle ...` line: words up to the first argument, every --option."""
    calls = []
    root = typer.main.get_command(app)
    for line in run_lines(workflow):
        found = LIFECYCLE.search(line)
        if not found:
            continue
        words = found.group(1).split()
        path: list[str] = []
        group = root
        for word in words:
            if word in getattr(group, "commands", {}):
                path.append(word)
                group = group.commands[word]
            else:
                break
        calls.append((path, re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", found.group(1))))
    return calls


def command(path: list[str]) -> Any:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("name", FILES)
def test_every_lifecycle_command_in_the_workflow_exists_with_its_options(name: str) -> None:
    calls = lifecycle_calls(load(name))
    assert calls, f"{name} runs no lifecycle command"
    for path, options in calls:
        assert path, f"{name}: a lifecycle line names no command"
        known = {opt for param in command(path).params for opt in (*param.opts, *param.secondary_opts)}
        assert set(options) <= known, f"{name}: lifecycle {' '.join(path)} has no {set(options) - known}"
        shown = subprocess.run(
            [sys.executable, "-m", "lifecycle.cli.app", *path, "--help"],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert shown.returncode == 0, shown.stderr
        for option in options:
            assert option in shown.stdout


@pytest.mark.parametrize("name", FILES)
def test_make_targets_in_the_workflow_are_in_the_makefile(name: str) -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))
    used = [line.split()[1] for line in run_lines(load(name)) if line.startswith("make ")]
    assert used == ["setup"]  # the README's set-up, nothing else
    assert set(used) <= targets


def test_verify_runs_on_pool_pull_requests_with_the_history_for_its_base() -> None:
    workflow = load("pool-verify.yml")
    assert workflow["on"]["pull_request"]["paths"] == ["serving/**"]
    (job,) = workflow["jobs"].values()
    checkout = job["steps"][0]
    assert checkout["uses"].startswith("actions/checkout@") and checkout["with"]["fetch-depth"] == 0
    assert [path for path, _ in lifecycle_calls(workflow)] == [["verify"]]
    step = next(s for s in job["steps"] if "lifecycle verify" in str(s.get("run", "")))
    assert step["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"


def test_apply_runs_one_at_a_time_on_the_serving_host_with_commit_and_pr() -> None:
    workflow = load("pool-apply.yml")
    assert workflow["on"]["push"] == {"branches": ["main"], "paths": ["serving/**"]}
    assert workflow["concurrency"] == {"group": "pool-apply", "cancel-in-progress": False}
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "serving"]
    calls = lifecycle_calls(workflow)
    assert calls == [(["apply"], ["--commit", "--pr"])]
    step = next(s for s in job["steps"] if "lifecycle apply" in str(s.get("run", "")))
    assert step["env"]["COMMIT_SHA"] == "${{ github.sha }}"
    assert "$COMMIT_SHA" in step["run"] and "$PR_NUMBER" in step["run"]
