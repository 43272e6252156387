"""The SkyPilot launcher's flow, with a stand-in for the cloud behind the real SkyClient and Task parser."""

from __future__ import annotations

import io
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sky_standin import (
    Scenario,
    StandInSky,
    stand_in_client,
    write_fake_output,
    write_mix_rows,
    write_sky_recipe,
)

from lifecycle import interrupt, manifest
from lifecycle.errors import LaunchError, ManifestError, NoCloudError, RecipeError, UserInputError
from lifecycle.launch import sky_launch
from lifecycle.launch.command import worker_command
from lifecycle.launch.sky_launch import SkyLauncher, SkyLaunchResult, dry_run, launch_sky
from lifecycle.launch.sky_task import REMOTE_WORKDIR
from lifecycle.recipe.load import LoadedRecipe, load_recipe
from lifecycle.runs import RunDir, RunInfo
from lifecycle.train.data import load_mix

ROOT = Path(__file__).resolve().parents[2]


def console() -> Console:
    return Console(file=io.StringIO(), width=200)


def output_of(c: Console) -> str:
    file = c.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def prepared_run(
    tmp_path: Path, launch: dict[str, Any] | None = None, mix: list[dict[str, Any]] | None = None
) -> tuple[LoadedRecipe, Path]:
    """A run directory as `lifecycle train` prepares it: run.json, recipe.yaml, data/ (with the files of
    `tmp_path/src/data`, mix files included). The recipe's relative paths now name the run's copies."""
    source = load_recipe(write_sky_recipe(tmp_path / "src", launch, mix=mix))
    run = RunDir(tmp_path / "runs" / "sky-test-20261128-120000-a1b2c3")
    run.write_info(
        RunInfo(run_id=run.path.name, recipe_name="sky-test", recipe_sha256=source.sha256, created="x")
    )
    shutil.copytree(tmp_path / "src" / "data", run.data_dir)
    run.recipe_path.write_text(source.text)
    return load_recipe(run.recipe_path), run.path


def poll_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The launcher's waits between two looks at a managed job, recorded instead of slept (other sleeps,
    such as the manifest writer's clock tick, happen as usual)."""
    waits: list[float] = []
    sleep = time.sleep

    def recorded(seconds: float) -> None:
        if seconds == sky_launch.POLL_S:
            waits.append(seconds)
            if len(waits) > 5:
                raise AssertionError("still following the job after 5 polls")
        else:
            sleep(seconds)

    monkeypatch.setattr(sky_launch.time, "sleep", recorded)
    return waits


def bucket_of(fake: StandInSky, run: Path) -> Path:
    return fake.buckets / "test-bucket" / "lifecycle" / run.name


# -------------------------------------------------------------------------------------------------- dry run


def test_dry_run_prints_task_plan_and_cost_and_launches_nothing(tmp_path: Path) -> None:
    loaded = load_recipe(
        write_sky_recipe(tmp_path, {"nodes": 2, "accelerators": "H100:8", "price_per_hour": 30})
    )
    client, fake = stand_in_client(tmp_path / "buckets")
    out = console()
    plan = dry_run(
        loaded,
        out,
        backend=client,
        run_dir=tmp_path / "runs" / "r1",
        expected_hours=2,
        secrets={"HF_TOKEN": "hf_very_secret"},
    )
    text = output_of(out)
    assert f"run: {worker_command()}" in text  # the rendered task
    assert "Resource plan" in text and "2 x H100:8 = 16 H100" in text
    assert (
        "Estimated cost $60.00/h (2 nodes x $30.00/node-h; launch.price_per_hour in the recipe); "
        "2 h ~ $120.00" in text
    )
    assert "HF_TOKEN (values not shown)" in text and "hf_very_secret" not in text
    assert "Nothing was launched" in text
    assert {name for name, _, _ in fake.calls} <= {"catalog.list_accelerators"}  # no launch, no server call
    assert not (tmp_path / "runs").exists()  # and nothing written
    assert plan.summary.num_nodes == 2 and plan.estimate.estimated_usd == 120.0


def test_dry_run_of_every_shipped_recipe(tmp_path: Path) -> None:
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        loaded = load_recipe(path)
        if loaded.recipe.launch.kind != "sky":
            continue
        client, fake = stand_in_client(tmp_path)
        out = console()
        plan = dry_run(loaded, out, backend=client, run_dir=tmp_path / loaded.recipe.name)
        assert plan.summary.run == worker_command(), path
        assert plan.rate.source == "recipe"  # no catalog here: the recipe's fallback price
        assert "Estimated cost $" in output_of(out)
        assert not [c for c in fake.calls if c[0] != "catalog.list_accelerators"]


def test_dry_run_with_the_catalog_prices_from_it(tmp_path: Path) -> None:
    loaded = load_recipe(write_sky_recipe(tmp_path, {"use_spot": True, "placements": [{"cloud": "aws"}]}))
    scenario = Scenario(
        accelerator_names=["H100"], offers={("H100", 1): [("aws", "p5.4xlarge", "us-east-1", 7.0, 3.1)]}
    )
    client, _ = stand_in_client(tmp_path, scenario)
    plan = dry_run(loaded, console(), backend=client, run_dir=tmp_path / "r")
    assert (plan.rate.source, plan.rate.usd_per_hour, plan.accelerators_checked_by) == (
        "catalog",
        3.1,
        "catalog",
    )


# ------------------------------------------------------------------------------------- checks before launch


def test_an_accelerator_skypilot_does_not_know_is_caught_before_launch(tmp_path: Path) -> None:
    loaded = load_recipe(write_sky_recipe(tmp_path, {"accelerators": "H1000:8"}))
    client, fake = stand_in_client(tmp_path)
    with pytest.raises(RecipeError) as err:
        dry_run(loaded, console(), backend=client, run_dir=tmp_path / "r")
    (problem,) = err.value.problems
    assert problem.startswith(f"{loaded.path}:")
    assert "launch.accelerators: SkyPilot does not know accelerator 'H1000'" in problem
    assert "did you mean 'H100'" in problem
    assert not fake.calls


def test_an_accelerator_count_no_cloud_offers_is_caught_with_a_catalog(tmp_path: Path) -> None:
    loaded = load_recipe(
        write_sky_recipe(tmp_path, {"accelerators": "H100:3", "placements": [{"cloud": "aws"}]})
    )
    scenario = Scenario(
        accelerator_names=["H100"], offers={("H100", 8): [("aws", "p5", "us-east-1", 55.0, 20.0)]}
    )
    client, _ = stand_in_client(tmp_path, scenario)
    with pytest.raises(
        RecipeError, match=r"launch.placements.0: SkyPilot's catalog lists no offer of H100:3 per node in aws"
    ):
        dry_run(loaded, console(), backend=client, run_dir=tmp_path / "r")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    model = tmp_path / "local-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    path = write_sky_recipe(
        tmp_path, {"accelerators": "V1OO:8", "bucket": "my-bucket/ckpts"}, base=str(model)
    )
    loaded = load_recipe(path)
    (tmp_path / "data" / "eval.jsonl").unlink()  # vanished after validation
    client, _ = stand_in_client(tmp_path)
    with pytest.raises(RecipeError) as err:
        dry_run(loaded, console(), backend=client, run_dir=tmp_path / "r")
    text = "\n".join(err.value.problems)
    assert "SkyPilot does not know accelerator 'V1OO'" in text
    assert (
        "'my-bucket/ckpts' is not a bucket URI SkyPilot can mount (allowed prefixes:" in text
        and "s3://" in text
    )
    assert "is a folder on this machine, which a cloud node cannot see" in text
    assert re.search(
        r"recipe.yaml:\d+: data.eval: \S+/eval.jsonl \(data/eval.jsonl on the node\) does not exist", text
    )
    assert all(p.startswith(f"{path}:") for p in err.value.problems)


def test_a_missing_bucket_is_reported_with_its_line(tmp_path: Path) -> None:
    loaded = load_recipe(write_sky_recipe(tmp_path, {"bucket": None}))
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: launch.bucket: required for launch.kind 'sky'"):
        dry_run(loaded, console(), backend=stand_in_client(tmp_path)[0], run_dir=tmp_path / "r")


def test_an_override_is_named_as_the_origin(tmp_path: Path) -> None:
    loaded = load_recipe(write_sky_recipe(tmp_path), ["launch.accelerators=B2OO:8"])
    with pytest.raises(
        RecipeError, match=r"recipe.yaml: override 'launch.accelerators=B2OO:8': launch.accelerators"
    ):
        dry_run(loaded, console(), backend=stand_in_client(tmp_path)[0], run_dir=tmp_path / "r")


def test_a_local_recipe_is_not_launched_on_sky(tmp_path: Path) -> None:
    loaded = load_recipe(write_sky_recipe(tmp_path), ["launch={kind: local}"])
    with pytest.raises(UserInputError, match="use --on sky"):
        launch_sky(loaded, tmp_path / "r", stand_in_client(tmp_path)[0], dry_run=True, console=console())


# ---------------------------------------------------------------------------------------------- managed job


def test_managed_job_brings_the_verified_model_home_and_records_cost(tmp_path: Path) -> None:
    loaded, run = prepared_run(tmp_path, {"price_per_hour": 4.0})
    client, fake = stand_in_client(
        tmp_path / "buckets", Scenario(on_run=write_fake_output, job_duration_s=5400)
    )
    out = console()
    result = launch_sky(loaded, run, client, dry_run=False, console=out, expected_hours=2)
    assert isinstance(result, SkyLaunchResult)
    assert (result.mode, result.status, result.name) == (
        "managed",
        "SUCCEEDED",
        "lifecycle-sky-test-20261128-120000-a1b2c3",
    )
    assert result.output_uri == f"s3://test-bucket/lifecycle/{run.name}"
    assert manifest.verify(run / "train" / "model").digest == result.brought_home.manifest_digest
    assert (run / "train" / "worker.json").is_file() and (
        run / "train" / "adapter" / "MANIFEST.json"
    ).is_file()
    assert (result.cost.usd_per_hour, result.cost.hours, result.cost.actual_usd) == (4.0, 1.5, 6.0)
    assert (result.cost.estimated_usd, result.cost.source) == (8.0, "recipe")
    # what was launched: the rendered file, SkyPilot-parsed, with the wheel and pins beside it
    (launched,) = fake.called("jobs.launch")
    assert launched["task"].run == worker_command()
    assert launched["task"].workdir == str(run.resolve())
    assert (run / "sky-task" / "task.yaml").is_file() and (run / "sky-task" / "constraints.txt").is_file()
    assert list((run / "sky-task").glob("lifecycle-*.whl"))
    assert (run / ".skyignore").read_text().split() == ["data/", "train/", "results/"]
    assert f"{Path('~/sky_workdir/data/train.jsonl')}" in launched["task"].file_mounts
    assert "model verified" in output_of(out)


@pytest.mark.parametrize("status", ["FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"])
def test_a_failed_managed_job_brings_nothing_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    polls = poll_waits(monkeypatch)
    loaded, run = prepared_run(tmp_path)
    client, fake = stand_in_client(
        tmp_path / "b", Scenario(on_run=write_fake_output, exit_code=100, final_status=status)
    )
    with pytest.raises(
        LaunchError, match=rf"managed job 1 ended {status}: exit code 1\. SkyPilot has released its GPUs"
    ):
        launch_sky(loaded, run, client, dry_run=False, console=console())
    assert not (run / "train" / "model").exists()  # even though the worker wrote one into the bucket
    assert not fake.called("jobs.cancel")
    assert polls == [] and len(fake.called("jobs.tail_logs")) == 1  # an ended job is not followed again


def test_a_preempted_managed_job_is_followed_through_its_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log stream ends when the spot node is preempted; SkyPilot recovers the job on another node, and
    the launcher follows it again after POLL_S, rather than give up or launch a second job."""
    waits = poll_waits(monkeypatch)
    loaded, run = prepared_run(tmp_path, {"use_spot": True, "price_per_hour": 2.0})
    client, fake = stand_in_client(
        tmp_path / "b", Scenario(final_status="RUNNING", recoveries=1, job_duration_s=7200)
    )
    statuses = iter(["RECOVERING", "SUCCEEDED"])

    def follow(*args: Any, **kwargs: Any) -> int:
        fake._bind("jobs.tail_logs", args, kwargs)
        status = next(statuses)
        if status == "SUCCEEDED":  # the job finishes on its second node
            write_fake_output(bucket_of(fake, run))
        fake.jobs_table[1]["status"] = status
        return 0

    fake.jobs.tail_logs = follow
    result = launch_sky(loaded, run, client, dry_run=False, console=console())
    assert isinstance(result, SkyLaunchResult)
    assert len(fake.called("jobs.tail_logs")) == 2 and waits == [sky_launch.POLL_S]
    assert len(fake.called("jobs.launch")) == 1
    assert (result.status, result.recoveries) == ("SUCCEEDED", 1)
    # SkyPilot's own duration of the job (both nodes), not this machine's wall time
    assert (result.cost.hours, result.cost.actual_usd) == (2.0, 4.0)
    manifest.verify(run / "train" / "model")


def test_a_corrupted_file_in_the_bucket_stops_the_pipeline(tmp_path: Path) -> None:
    def corrupted(output: Path) -> None:
        write_fake_output(output)
        (output / "model" / "config.json").write_text('{"model_type": "gpt2"}')

    loaded, run = prepared_run(tmp_path)
    client, _ = stand_in_client(tmp_path / "b", Scenario(on_run=corrupted))
    with pytest.raises(ManifestError, match=r"changed: config.json"):
        launch_sky(loaded, run, client, dry_run=False, console=console())
    assert not (run / "train" / "model").exists()


def test_a_rerun_follows_the_job_already_running_for_the_run(tmp_path: Path) -> None:
    loaded, run = prepared_run(tmp_path)
    client, fake = stand_in_client(tmp_path / "b", Scenario(on_run=write_fake_output))
    name = f"lifecycle-{run.name}"
    fake.jobs_table[7] = {"name": name, "status": "RECOVERING", "task": None}  # launched before a Ctrl-C
    fake._next_job = 8

    def finish(*args: Any, **kwargs: Any) -> int:
        write_fake_output(bucket_of(fake, run))  # the running job completes while we follow it
        fake.jobs_table[7]["status"] = "SUCCEEDED"
        return 0

    fake.jobs.tail_logs = finish
    result = launch_sky(loaded, run, client, dry_run=False, console=console())
    assert isinstance(result, SkyLaunchResult) and result.job_id == 7
    assert not fake.called("jobs.launch")
    assert (run / "sky-task" / "job.json").read_text().count('"job_id": 7') == 1


@pytest.mark.parametrize(
    "stop", [KeyboardInterrupt(), interrupt.Interrupted(signal.SIGTERM)], ids=["ctrl-c", "sigterm"]
)
def test_a_stop_detaches_from_a_managed_job(tmp_path: Path, stop: BaseException) -> None:
    loaded, run = prepared_run(tmp_path)
    client, fake = stand_in_client(tmp_path / "b", Scenario(tail_error=stop))
    out = console()
    with pytest.raises(type(stop)):
        launch_sky(loaded, run, client, dry_run=False, console=out)
    assert "detached from managed job 1; it keeps running on SkyPilot" in output_of(out)
    assert not fake.called("jobs.cancel")
    assert (run / "sky-task" / "job.json").is_file()  # what a rerun or `lifecycle jobs` follows


def test_no_cloud_from_the_launch_is_the_clear_error(tmp_path: Path) -> None:
    import sky

    loaded, run = prepared_run(tmp_path)
    error = sky.exceptions.NoCloudAccessError("Cloud access is not set up. Run: sky check")
    client, _ = stand_in_client(tmp_path / "b", Scenario(launch_error=error))
    with pytest.raises(NoCloudError, match="no cloud is enabled for SkyPilot: run `sky check`"):
        launch_sky(loaded, run, client, dry_run=False, console=console())


# -------------------------------------------------------------------------------------------- plain cluster


def test_plain_cluster_success_is_torn_down_before_bring_home(tmp_path: Path) -> None:
    loaded, run = prepared_run(tmp_path, {"managed": False, "idle_minutes_to_autostop": 3})
    client, fake = stand_in_client(tmp_path / "b", Scenario(on_run=write_fake_output))
    result = launch_sky(loaded, run, client, dry_run=False, console=console())
    assert isinstance(result, SkyLaunchResult) and result.mode == "cluster"
    (launched,) = fake.called("launch")
    assert (launched["idle_minutes_to_autostop"], launched["down"]) == (3, True)
    assert launched["task"].resources.pop().autostop_config.down  # autodown in the task itself too
    assert [c["cluster_name"] for c in fake.called("down")] == [result.name]
    assert fake.clusters == set()
    assert (run / "train" / "model" / "MANIFEST.json").is_file()


@pytest.mark.parametrize(
    ("scenario", "error"),
    [
        (Scenario(exit_code=100), LaunchError),  # the job failed
        (Scenario(exit_code=103), LaunchError),  # the job was cancelled on the cluster
        (Scenario(tail_error=KeyboardInterrupt()), KeyboardInterrupt),  # Ctrl-C while following
        (Scenario(tail_error=interrupt.Interrupted(signal.SIGTERM)), interrupt.Interrupted),  # a stop signal
        (Scenario(launch_error=RuntimeError("provisioning broke")), LaunchError),  # failed mid-provisioning
        (Scenario(launch_error=KeyboardInterrupt()), KeyboardInterrupt),  # Ctrl-C while provisioning
    ],
    ids=["failed", "cancelled", "ctrl-c", "sigterm", "launch-error", "ctrl-c-provisioning"],
)
def test_a_plain_cluster_is_torn_down_however_the_job_ends(
    tmp_path: Path, scenario: Scenario, error: type[BaseException]
) -> None:
    loaded, run = prepared_run(tmp_path, {"managed": False})
    client, fake = stand_in_client(tmp_path / "b", scenario)
    with pytest.raises(error):
        launch_sky(loaded, run, client, dry_run=False, console=console())
    assert len(fake.called("down")) == 1
    assert fake.clusters == set()  # no cluster left running
    assert not (run / "train" / "model").exists()


def test_a_cluster_that_survives_down_is_reported(tmp_path: Path) -> None:
    loaded, run = prepared_run(tmp_path, {"managed": False})
    client, _ = stand_in_client(tmp_path / "b", Scenario(on_run=write_fake_output, down_leaves_cluster=True))
    with pytest.raises(LaunchError, match=r"still exists after `sky down`: run `sky down lifecycle-sky-test"):
        launch_sky(loaded, run, client, dry_run=False, console=console())


def test_a_failed_teardown_does_not_hide_the_jobs_own_error(tmp_path: Path) -> None:
    loaded, run = prepared_run(tmp_path, {"managed": False})
    client, _ = stand_in_client(tmp_path / "b", Scenario(exit_code=100, down_leaves_cluster=True))
    out = console()
    with pytest.raises(LaunchError, match="ended with SkyPilot exit code 100"):
        launch_sky(loaded, run, client, dry_run=False, console=out)
    assert "could not tear down cluster" in output_of(out)


# ------------------------------------------------------------------------------------- the stage's launcher


def test_sky_launcher_is_the_stages_launcher(tmp_path: Path) -> None:
    _, run = prepared_run(tmp_path, {"price_per_hour": 2.0})
    client, fake = stand_in_client(tmp_path / "b", Scenario(on_run=write_fake_output, job_duration_s=3600))
    launcher = SkyLauncher(backend=client, console=console(), secrets={"HF_TOKEN": "hf_x"})
    spent = launcher(RunDir(run))
    assert (spent.actual_usd, spent.hours, spent.source) == (2.0, 1.0, "recipe")
    assert (run / "train" / "worker.json").is_file()
    (launched,) = fake.called("jobs.launch")
    assert launched["name"] == f"lifecycle-{run.name}"
    assert launched["task"].secrets["HF_TOKEN"].get_secret_value() == "hf_x"  # a secret, never an env
    assert "HF_TOKEN" not in launched["task"].envs
    assert "hf_x" not in (run / "sky-task" / "task.yaml").read_text()


# ------------------------------------------------------------------------------------------------ data.mix


def test_mix_files_reach_the_node_where_the_runs_recipe_names_them(tmp_path: Path) -> None:
    """`data.mix` sources as a run names them: a copy inside the run (`data/mix/...`, which the workdir sync
    leaves out) and a file at an absolute path outside it. Replaying the launched task's workdir sync and file
    mounts onto a stand-in node, the worker there loads the run's recipe and reads every mix row."""
    write_mix_rows(tmp_path / "src" / "data" / "mix" / "0-replay.jsonl", 3)
    outside = write_mix_rows(tmp_path / "shared" / "general.jsonl", 2)
    mix = [
        {"path": "data/mix/0-replay.jsonl", "format": "prompt_completion", "weight": 0.2},
        {"path": str(outside), "format": "prompt_completion", "weight": 0.1},
    ]
    loaded, run = prepared_run(tmp_path, mix=mix)
    client, fake = stand_in_client(tmp_path / "b", Scenario(on_run=write_fake_output))
    launch_sky(loaded, run, client, dry_run=False, console=console())
    (launched,) = fake.called("jobs.launch")
    task = launched["task"]  # as SkyPilot's parser read the launched file

    workdir = tmp_path / "node" / "sky_workdir"
    skipped = {line.rstrip("/") for line in (run / ".skyignore").read_text().split()}
    shutil.copytree(
        task.workdir, workdir, ignore=lambda d, names: skipped & set(names) if d == task.workdir else set()
    )
    elsewhere = {}
    for remote, local in task.file_mounts.items():
        if remote.startswith(f"{REMOTE_WORKDIR}/"):
            dest = workdir / remote.removeprefix(f"{REMOTE_WORKDIR}/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, dest)
        else:
            elsewhere[remote] = local
    assert elsewhere == {str(outside): str(outside)}  # the same absolute path on the node

    on_node = load_recipe(workdir / "recipe.yaml").recipe.data  # checks that every data file is there
    assert [s.path for s in on_node.mix] == [workdir / "data" / "mix" / "0-replay.jsonl", outside]
    assert on_node.train == workdir / "data" / "train.jsonl"
    assert [len(rows) for _, rows in load_mix(on_node)] == [3, 2]


def test_a_missing_mix_file_is_caught_before_launch(tmp_path: Path) -> None:
    replay = write_mix_rows(tmp_path / "replay.jsonl")
    loaded = load_recipe(
        write_sky_recipe(tmp_path, mix=[{"path": str(replay), "format": "prompt_completion", "weight": 0.1}])
    )
    replay.unlink()  # vanished after validation
    client, _ = stand_in_client(tmp_path)
    with pytest.raises(RecipeError, match=rf"recipe.yaml:\d+: data.mix.0.path: {replay} does not exist"):
        dry_run(loaded, console(), backend=client, run_dir=tmp_path / "r")
