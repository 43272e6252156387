"""The SkyPilot task: every shipped sky recipe renders, SkyPilot's own parser accepts it, and its `run` is
exactly the command the local launcher executes."""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from sky_standin import write_mix_rows, write_sky_recipe

import sky
from lifecycle.launch import remote_env
from lifecycle.launch.command import OUTPUT_ENV, worker_argv, worker_command
from lifecycle.launch.sky_client import SkyClient
from lifecycle.launch.sky_preflight import data_mounts
from lifecycle.launch.sky_task import (
    REMOTE_OUTPUT,
    REMOTE_WORKDIR,
    TEMPLATE,
    infra,
    job_name,
    output_uri,
    render_task,
    to_yaml,
)
from lifecycle.recipe.load import data_files, load_recipe
from lifecycle.recipe.schema import Placement, SkyLaunch
from lifecycle.runs import new_run_id

ROOT = Path(__file__).resolve().parents[2]
SKY_RECIPES = sorted(
    p for p in (ROOT / "recipes").glob("*.yaml") if "kind: sky" in p.read_text()
)  # every shipped recipe that launches on SkyPilot


def render(path: Path, tmp_path: Path) -> tuple[str, Path]:
    loaded = load_recipe(path)
    launch = loaded.recipe.launch
    assert isinstance(launch, SkyLaunch)
    assert launch.bucket is not None
    task = render_task(
        name=job_name("run-1"),
        run_dir=tmp_path / "run-1",
        launch=launch,
        output=output_uri(launch.bucket, "run-1"),
        data_files={f"data/{k}.jsonl": v for k, v in data_files(loaded.recipe.data).items()},
        payload=remote_env.planned_payload(),
    )
    text = to_yaml(task)
    file = tmp_path / "task.yaml"
    file.write_text(text)
    return text, file


def test_real_recipes_are_shipped() -> None:
    names = {p.name for p in SKY_RECIPES}
    assert {"llama-8b-lora-h100.yaml", "llama-70b-full-2x8h100.yaml"} <= names


@pytest.mark.parametrize("path", SKY_RECIPES, ids=lambda p: p.name)
def test_every_sky_recipe_parses_with_skypilot(path: Path, tmp_path: Path) -> None:
    _, file = render(path, tmp_path)
    task = sky.Task.from_yaml(str(file))  # SkyPilot's own schema check ("did you mean" for typos)
    launch = load_recipe(path).recipe.launch
    assert isinstance(launch, SkyLaunch)
    name, _, count = launch.accelerators.partition(":")
    assert task.num_nodes == launch.nodes
    for res in task.resources:
        assert res.accelerators == {name: int(count or 1)}
        assert res.use_spot == launch.use_spot
        assert res.disk_size == launch.disk_size
        if launch.managed:
            assert res.job_recovery is not None
            assert res.job_recovery["max_restarts_on_errors"] == launch.max_restarts_on_errors
    clouds = [str(r.cloud).lower() for r in task.resources if r.cloud is not None]
    assert clouds == [p.cloud for p in launch.placements if p.cloud]
    assert task.envs[OUTPUT_ENV] == REMOTE_OUTPUT
    assert task.storage_mounts[REMOTE_OUTPUT].source == f"{launch.bucket}/run-1"
    assert task.storage_mounts[REMOTE_OUTPUT].mode.value == "MOUNT_CACHED"
    assert f"{REMOTE_WORKDIR}/data/train.jsonl" in (task.file_mounts or {})
    task.expand_and_validate_file_mounts()  # the data files exist where the mounts say


@pytest.mark.parametrize("path", SKY_RECIPES, ids=lambda p: p.name)
def test_the_rendered_run_is_the_local_launchers_command(path: Path, tmp_path: Path) -> None:
    _, file = render(path, tmp_path)
    assert sky.Task.from_yaml(str(file)).run == worker_command()
    assert shlex.split(worker_command()) == worker_argv()  # what lifecycle.launch.local executes
    summary = SkyClient().parse_task(file, check_paths=False)
    assert summary.run == worker_command()


def test_the_template_itself_runs_the_same_command() -> None:
    template = YAML(typ="safe").load(TEMPLATE.read_text())
    assert template["run"] == worker_command()
    assert sky.Task.from_yaml(str(TEMPLATE)).run == worker_command()


def test_shipped_recipes_start_with_what_where_and_cost() -> None:
    for path in SKY_RECIPES:
        head = path.read_text().split("\nname:")[0]
        assert f"lifecycle train recipes/{path.name}" in head, path
        assert "H100" in head and "$" in head, path


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        (Placement(cloud="aws"), "aws"),
        (Placement(cloud="aws", region="us-east-1"), "aws/us-east-1"),
        (Placement(cloud="gcp", region="us-central1", zone="us-central1-a"), "gcp/us-central1/us-central1-a"),
        (Placement(region="us-east-1"), "*/us-east-1"),
        (Placement(), None),
    ],
)
def test_placements_become_infra_strings_skypilot_accepts(
    placement: Placement, expected: str | None, tmp_path: Path
) -> None:
    assert infra(placement) == expected
    if expected is not None:
        file = tmp_path / "t.yaml"
        file.write_text(f"resources:\n  accelerators: H100:1\n  infra: '{expected}'\nrun: echo\n")
        sky.Task.from_yaml(str(file))


@pytest.mark.parametrize(
    "run_id",
    ["demo-tickets-20261128-101010-0a1b2c", "Odd_Name..2026", "x" * 90, "y" * 40 + "-20261128-101010"],
)
def test_job_names_are_valid_skypilot_cluster_names(run_id: str) -> None:
    from sky.skylet import constants

    name = job_name(run_id)
    assert re.fullmatch(constants.CLUSTER_NAME_VALID_REGEX, name), name
    assert len(name) <= 63


def test_a_long_recipe_name_keeps_the_run_ids_unique_tail() -> None:
    """The rerun of a run follows its managed job by name: runs of one long-named recipe, started in the
    same second, must get different names, each ending in its run id's time and random tail."""
    recipe = "llama-3-1-70b-instruct-full-fine-tune-on-support-tickets-v2"
    when = dt.datetime(2026, 11, 28, 12, 0, 0)
    first, second = (job_name(new_run_id(recipe, when, token)) for token in ("a1b2c3", "d4e5f6"))
    assert first != second
    assert first.endswith("-20261128-120000-a1b2c3") and second.endswith("-20261128-120000-d4e5f6")
    assert first.startswith("lifecycle-llama-3-1-70b-") and len(first) == 63
    short = new_run_id("demo", when, "a1b2c3")
    assert job_name(short) == f"lifecycle-{short}"  # a name that fits is left whole
    # a run id of another shape: distinct ids still give distinct names
    assert job_name("x" * 90) != job_name("x" * 89 + "y")


def test_a_recipe_with_a_mix_renders_a_mount_for_every_mix_file(tmp_path: Path) -> None:
    """A dry run (no run directory yet) of a recipe with `data.mix`: train and eval are planned where the
    training stage copies them, each mix source is mounted at the path the recipe names, and SkyPilot's
    parser accepts the task and finds every mounted file."""
    data = tmp_path / "src" / "data"
    mix = [
        {"path": str(write_mix_rows(data / name)), "format": "prompt_completion", "weight": 0.1}
        for name in ("replay.jsonl", "general.jsonl")
    ]
    write_sky_recipe(tmp_path / "src", mix=mix)
    loaded = load_recipe(tmp_path / "src" / "recipe.yaml")
    launch = loaded.recipe.launch
    assert isinstance(launch, SkyLaunch)
    task = render_task(
        name=job_name("run-1"),
        run_dir=tmp_path / "runs" / "run-1",
        launch=launch,
        output=output_uri("s3://b/l", "run-1"),
        data_files=data_mounts(loaded, tmp_path / "runs" / "run-1"),
        payload=remote_env.planned_payload(),
    )
    file = tmp_path / "task.yaml"
    file.write_text(to_yaml(task))
    parsed = sky.Task.from_yaml(str(file))
    assert parsed.file_mounts == {
        f"{REMOTE_WORKDIR}/data/train.jsonl": str(data / "train.jsonl"),
        f"{REMOTE_WORKDIR}/data/eval.jsonl": str(data / "eval.jsonl"),
        str(data / "replay.jsonl"): str(data / "replay.jsonl"),
        str(data / "general.jsonl"): str(data / "general.jsonl"),
    }
    parsed.expand_and_validate_file_mounts()


def test_the_setup_script_builds_the_venv_and_puts_lifecycle_on_path(tmp_path: Path) -> None:
    """Run the template's setup with a stand-in `uv` (no downloads): it creates the venv, installs the wheel
    with the constraints, and makes `lifecycle` reachable for the bare `run` command."""
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    log = tmp_path / "uv.log"
    uv = home / ".local" / "bin" / "uv"
    uv.write_text(
        "#!/bin/bash\n"
        f'echo "$@" >> {log}\n'
        'if [ "$1" = venv ]; then for a in "$@"; do d="$a"; done; mkdir -p "$d/bin";\n'
        '  printf "#!/bin/bash\\necho lifecycle-ok\\n" > "$d/bin/lifecycle";\n'
        '  chmod +x "$d/bin/lifecycle"; fi\n'
    )
    uv.chmod(0o755)
    setup = YAML(typ="safe").load(TEMPLATE.read_text())["setup"]
    env = {
        "HOME": str(home),
        "PATH": os.environ["PATH"],
        "LIFECYCLE_PYTHON": "3.11",
        "LIFECYCLE_WHEEL": "sky-task/lifecycle-0.1.0-py3-none-any.whl",
        "LIFECYCLE_CONSTRAINTS": "sky-task/constraints.txt",
    }
    for _ in range(2):  # setup runs again after a recovery: it must be idempotent
        done = subprocess.run(["bash", "-c", setup], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == f"venv --quiet --allow-existing --python 3.11 {home}/lifecycle-venv"
    assert calls[1] == (
        f"pip install --quiet --python {home}/lifecycle-venv/bin/python "
        "--constraint sky-task/constraints.txt sky-task/lifecycle-0.1.0-py3-none-any.whl"
    )
    bashrc = (home / ".bashrc").read_text()
    assert bashrc.count("lifecycle-venv/bin") == 1
    found = subprocess.run(
        ["bash", "-c", f"source {home}/.bashrc && command -v lifecycle"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert found.stdout.strip() == f"{home}/lifecycle-venv/bin/lifecycle"


def test_a_failing_install_fails_the_setup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "uv").write_text("#!/bin/bash\nexit 3\n")
    (home / ".local" / "bin" / "uv").chmod(0o755)
    setup = YAML(typ="safe").load(TEMPLATE.read_text())["setup"]
    env = {
        "HOME": str(home),
        "PATH": os.environ["PATH"],
        "LIFECYCLE_PYTHON": "3.11",
        "LIFECYCLE_WHEEL": "w.whl",
        "LIFECYCLE_CONSTRAINTS": "c.txt",
    }
    done = subprocess.run(["bash", "-c", setup], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0
