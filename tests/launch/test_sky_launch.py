"""The SkyPilot launcher's flow, with a stand-in for the cloud behind the real SkyClient and Task parser."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sky_standin import Scenario, StandInSky, stand_in_client, write_fake_output, write_sky_recipe

from lifecycle import manifest
from lifecycle.errors import LaunchError, ManifestError, NoCloudError, RecipeError, UserInputError
from lifecycle.launch import sky_launch
from lifecycle.launch.command import worker_command
from lifecycle.launch.sky_launch import DryRunPlan, SkyLauncher, SkyLaunchResult, dry_run, launch_sky
from lifecycle.recipe.load import LoadedRecipe, load_recipe
from lifecycle.runs import RunDir, RunInfo

ROOT = Path(__file__).resolve().parents[2]


def console() -> Console:
    return Console(file=io.StringIO(), width=200)


def output_of(c: Console) -> str:
    file = c.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def prepared_run(tmp_path: Path, launch: dict[str, Any] | None = None) -> tuple[LoadedRecipe, Path]:
    """A run directory as `lifecycle train` prepares it: run.json, recipe.yaml, data/."""
    source = load_recipe(write_sky_recipe(tmp_path / "src", launch))
    run = RunDir(tmp_path / "runs" / "sky-test-20261128-120000")
    run.write_info(
        RunInfo(run_id=run.path.name, recipe_name="sky-test", recipe_sha256=source.sha256, created="x")
    )
    run.data_dir.mkdir()
    for name in ("train.jsonl", "eval.jsonl"):
        (run.data_dir / name).write_text((tmp_path / "src" / "data" / name).read_text())
    text = source.text.replace("data/train.jsonl", "data/train.jsonl")  # relative to the run directory
    run.recipe_path.write_text(text)
    return load_recipe(run.recipe_path), run.path


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
    assert isinstance(plan, DryRunPlan)
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
    assert "eval.jsonl" in text and "does not exist" in text
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
        "lifecycle-sky-test-20261128-120000",
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


def test_a_failed_managed_job_brings_nothing_home(tmp_path: Path) -> None:
    loaded, run = prepared_run(tmp_path)
    client, _ = stand_in_client(
        tmp_path / "b", Scenario(on_run=write_fake_output, exit_code=100, final_status="FAILED")
    )
    with pytest.raises(
        LaunchError, match=r"managed job 1 ended FAILED: exit code 1\. SkyPilot has released its GPUs"
    ):
        launch_sky(loaded, run, client, dry_run=False, console=console())
    assert not (run / "train" / "model").exists()


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


def test_ctrl_c_detaches_from_a_managed_job(tmp_path: Path) -> None:
    loaded, run = prepared_run(tmp_path)
    client, fake = stand_in_client(tmp_path / "b", Scenario(tail_error=KeyboardInterrupt()))
    out = console()
    with pytest.raises(KeyboardInterrupt):
        launch_sky(loaded, run, client, dry_run=False, console=out)
    assert "keeps running on SkyPilot" in output_of(out)
    assert not fake.called("jobs.cancel")


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
        (Scenario(launch_error=RuntimeError("provisioning broke")), LaunchError),  # failed mid-provisioning
        (Scenario(launch_error=KeyboardInterrupt()), KeyboardInterrupt),  # Ctrl-C while provisioning
    ],
    ids=["failed", "cancelled", "ctrl-c", "launch-error", "ctrl-c-provisioning"],
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
    client, _ = stand_in_client(tmp_path / "b", Scenario(on_run=write_fake_output, job_duration_s=3600))
    launcher = SkyLauncher(backend=client, console=console(), secrets={"HF_TOKEN": "x"})
    spent = launcher(RunDir(run))
    assert launcher.kind == "sky"
    assert (spent.actual_usd, spent.source) == (2.0, "recipe")
    assert (run / "train" / "worker.json").is_file()


def test_poll_interval_is_short_enough_to_follow_a_recovery() -> None:
    assert 1 <= sky_launch.POLL_S <= 60
