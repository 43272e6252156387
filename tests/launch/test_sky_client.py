"""SkyClient at the `sky` SDK boundary: real signatures, request ids resolved with get/stream_and_get, real
result shapes, and SkyPilot's exceptions turned into one-line platform errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from sky_standin import Scenario, StandInSky, stand_in_client, write_fake_output

import sky
from lifecycle.errors import LaunchError, NoCloudError
from lifecycle.launch.sky_client import SkyClient

TASK = """\
name: lifecycle-t
resources:
  accelerators: H100:1
envs:
  LIFECYCLE_OUTPUT_DIR: /lifecycle/output
file_mounts:
  /lifecycle/output:
    source: s3://bkt/run-1
    mode: MOUNT_CACHED
run: lifecycle worker train recipe.yaml
"""


@pytest.fixture
def task(tmp_path: Path) -> Path:
    path = tmp_path / "task.yaml"
    path.write_text(TASK)
    return path


def test_the_stand_in_refuses_what_the_real_sdk_refuses(tmp_path: Path) -> None:
    """The other tests mean something only if the stand-in is as strict as SkyPilot: a keyword the real
    function lacks, a missing argument, or a request id resolved twice (or never issued) fail here too."""
    fake = StandInSky(tmp_path)
    with pytest.raises(TypeError, match="job_name"):
        fake.jobs.launch(sky.Task(run="x"), job_name="nope")
    with pytest.raises(TypeError, match="cluster_name"):
        fake.down()
    request = fake.down("absent")
    with pytest.raises(sky.exceptions.ClusterDoesNotExist):  # raised by `get`, as the real SDK does
        fake.get(request)
    with pytest.raises(sky.exceptions.ClientError, match="resolved twice"):
        fake.get(request)
    with pytest.raises(sky.exceptions.ClientError):
        fake.get("not-a-request-id")


def test_a_failing_folder_copy_is_an_error_and_a_failing_file_copy_an_absent_file(tmp_path: Path) -> None:
    """Copying from a bucket with the cloud's CLI: a folder copy that fails (credentials, network) must not
    read as "no model in the bucket", while object stores answer a missing file with an error."""
    client, fake = stand_in_client(tmp_path / "buckets")
    write_fake_output(tmp_path / "buckets" / "bkt" / "run-1")
    denied = "echo 'upload failed: An error occurred (AccessDenied) when calling ListObjectsV2' >&2; exit 1"
    fake.cloud_stores.get_storage_from_path = lambda url: SimpleNamespace(
        make_sync_dir_command=lambda source, destination: denied,
        make_sync_file_command=lambda source, destination: denied,
    )
    with pytest.raises(LaunchError, match=r"could not copy s3://bkt/run-1/model to .*AccessDenied"):
        client.sync_down("s3://bkt/run-1/model", tmp_path / "home" / "model", is_dir=True)
    assert not client.sync_down("s3://bkt/run-1/worker.json", tmp_path / "home" / "w.json", is_dir=False)


def test_an_unreachable_api_server_says_how_to_start_it(task: Path, tmp_path: Path) -> None:
    error = sky.exceptions.ApiServerConnectionError("http://127.0.0.1:46580")
    client, _ = stand_in_client(tmp_path, Scenario(launch_error=error))
    with pytest.raises(LaunchError, match=r"cannot reach the SkyPilot API server .*: try `sky api start`"):
        client.launch_managed(task, "lifecycle-t", secrets={})


def test_managed_launch_resolves_the_request_to_a_job_id(task: Path, tmp_path: Path) -> None:
    client, fake = stand_in_client(tmp_path / "buckets", Scenario(on_run=write_fake_output))
    job_id = client.launch_managed(task, "lifecycle-t", secrets={"HF_TOKEN": "hf_secret"})
    assert job_id == 1
    (call,) = fake.called("jobs.launch")
    assert call["name"] == "lifecycle-t"
    assert call["task"].secrets["HF_TOKEN"].get_secret_value() == "hf_secret"  # a secret, not an env var
    assert "HF_TOKEN" not in call["task"].envs
    assert [c["request_id"] for c in fake.called("stream_and_get")]  # the request was streamed, then resolved
    assert (tmp_path / "buckets" / "bkt" / "run-1" / "model" / "MANIFEST.json").is_file()


def test_queue_records_become_managed_jobs(task: Path, tmp_path: Path) -> None:
    client, _ = stand_in_client(tmp_path, Scenario(final_status="FAILED", recoveries=2, job_duration_s=3600))
    job_id = client.launch_managed(task, "lifecycle-t", secrets={})
    job = client.managed_job(job_id)
    assert (job.job_id, job.name, job.status, job.recovery_count, job.duration_s) == (
        job_id,
        "lifecycle-t",
        "FAILED",
        2,
        3600.0,
    )
    assert job.terminal and not job.succeeded and job.failure_reason == "exit code 1"
    assert [j.job_id for j in client.managed_jobs()] == [job_id]
    with pytest.raises(LaunchError, match="does not exist"):
        client.managed_job(99)


def test_cancel_and_logs(task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client, fake = stand_in_client(tmp_path, Scenario(exit_code=100))
    job_id = client.launch_managed(task, "lifecycle-t", secrets={})
    assert client.tail_managed(job_id) == 100
    assert "logs of managed job" in capsys.readouterr().out
    client.cancel_managed(job_id)
    assert fake.called("jobs.cancel")[0]["job_ids"] == [job_id]
    assert client.managed_job(job_id).status == "CANCELLED"


def test_no_cloud_is_one_line_telling_to_run_sky_check(task: Path, tmp_path: Path) -> None:
    error = sky.exceptions.NoCloudAccessError("Cloud access is not set up. Run: \x1b[1msky check\x1b[0m")
    client, _ = stand_in_client(tmp_path, Scenario(launch_error=error))
    with pytest.raises(NoCloudError) as err:
        client.launch_managed(task, "lifecycle-t", secrets={})
    assert "sky check" in str(err.value) and "\n" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained traceback


def test_no_cloud_storage_for_the_bucket_is_a_no_cloud_error(task: Path, tmp_path: Path) -> None:
    error = sky.exceptions.NotSupportedError(
        "Cloud-based file_mounts are specified, but no cloud storage is available. Please specify local "
        "file_mounts only."
    )
    client, _ = stand_in_client(tmp_path, Scenario(launch_error=error))
    with pytest.raises(NoCloudError, match=r"bucket s3://bkt/run-1 cannot be mounted: run `sky check`"):
        client.launch_managed(task, "lifecycle-t", secrets={})


def test_an_unreachable_catalog_is_a_no_cloud_error(task: Path, tmp_path: Path) -> None:
    error = sky.exceptions.CloudError(
        "HTTPSConnectionPool(host='raw.githubusercontent.com', port=443): Max retries exceeded",
        cloud_provider="requests",
        error_type="ConnectionError",
    )
    client, _ = stand_in_client(tmp_path, Scenario(launch_error=error))
    with pytest.raises(NoCloudError, match="cannot download its catalog") as err:
        client.launch_managed(task, "lifecycle-t", secrets={})
    assert "(raw.githubusercontent.com): this machine has no internet access" in str(err.value)


def test_no_jobs_controller_means_no_jobs(tmp_path: Path) -> None:
    client, _ = stand_in_client(tmp_path, Scenario(no_controller=True))
    assert client.managed_jobs() == []
    with pytest.raises(LaunchError, match="managed job 3 does not exist"):
        client.managed_job(3)


def test_other_skypilot_errors_are_launch_errors(task: Path, tmp_path: Path) -> None:
    error = sky.exceptions.ResourcesUnavailableError("Failed to acquire resources in all zones in us-east-1")
    client, _ = stand_in_client(tmp_path, Scenario(launch_error=error))
    with pytest.raises(
        LaunchError, match="no cloud could provide the requested resources: Failed to acquire"
    ):
        client.launch_cluster(task, "lifecycle-t", idle_minutes_to_autostop=5, secrets={})


def test_cluster_launch_down_and_status(task: Path, tmp_path: Path) -> None:
    client, fake = stand_in_client(tmp_path)
    job_id = client.launch_cluster(task, "lifecycle-t", idle_minutes_to_autostop=7, secrets={})
    assert job_id == 1
    call = fake.called("launch")[0]
    assert (call["cluster_name"], call["idle_minutes_to_autostop"], call["down"]) == ("lifecycle-t", 7, True)
    assert client.cluster_exists("lifecycle-t")
    client.down("lifecycle-t")
    assert not client.cluster_exists("lifecycle-t")
    client.down("lifecycle-t")  # already gone: SkyPilot's ClusterDoesNotExist is what we wanted


def test_parse_task_reports_skypilots_own_complaint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TASK.replace("accelerators", "acelerators"))
    with pytest.raises(LaunchError, match="did you mean 'accelerators'"):
        SkyClient(sdk=StandInSky(tmp_path)).parse_task(bad, check_paths=False)


def test_parse_task_checks_local_paths_when_asked(tmp_path: Path) -> None:
    missing = tmp_path / "m.yaml"
    missing.write_text(TASK + f"workdir: {tmp_path / 'nope'}\n")
    client = SkyClient(sdk=StandInSky(tmp_path))
    assert client.parse_task(missing, check_paths=False).workdir == str(tmp_path / "nope")
    with pytest.raises(LaunchError, match="Workdir must be a valid directory"):
        client.parse_task(missing, check_paths=True)


def test_accelerator_names_fall_back_to_skypilots_bundled_list_offline(tmp_path: Path) -> None:
    offline = SkyClient(sdk=StandInSky(tmp_path, Scenario(accelerator_names=None))).accelerator_names()
    assert offline.source == "bundled" and "H100" in offline.names and "A100-80GB" in offline.names
    online = SkyClient(
        sdk=StandInSky(tmp_path, Scenario(accelerator_names=["H100", "MI300X"]))
    ).accelerator_names()
    assert (online.source, online.names) == ("catalog", frozenset({"H100", "MI300X"}))


def test_offers_are_cheapest_first_and_none_offline(tmp_path: Path) -> None:
    offers = {
        ("H100", 8): [("aws", "p5.48xlarge", "us-east-1", 55.0, 20.0), ("gcp", "a3-8g", "us-c1", 88.0, 25.0)]
    }
    client = SkyClient(sdk=StandInSky(tmp_path, Scenario(offers=offers)))
    got = client.offers("H100", 8, use_spot=True, cloud=None, region=None)
    assert got is not None
    assert [(o.cloud, o.usd_per_node_hour) for o in got] == [("aws", 20.0), ("gcp", 25.0)]
    assert client.offers("H100", 4, use_spot=False, cloud="aws", region=None) == []
    assert (
        SkyClient(sdk=StandInSky(tmp_path)).offers("H100", 8, use_spot=False, cloud=None, region=None) is None
    )


def test_sync_down_uses_the_clouds_cli_command(tmp_path: Path) -> None:
    client, _ = stand_in_client(tmp_path / "buckets")
    write_fake_output(tmp_path / "buckets" / "bkt" / "run-1")
    assert client.sync_down("s3://bkt/run-1/model", tmp_path / "home" / "model", is_dir=True)
    assert (tmp_path / "home" / "model" / "MANIFEST.json").is_file()
    assert client.sync_down("s3://bkt/run-1/worker.json", tmp_path / "home" / "worker.json", is_dir=False)
    assert not client.sync_down("s3://bkt/run-1/absent", tmp_path / "home" / "absent", is_dir=True)
    assert not client.sync_down("s3://bkt/run-1/absent.json", tmp_path / "home" / "absent.json", is_dir=False)


def test_bucket_prefixes_come_from_skypilots_store_types() -> None:
    prefixes = SkyClient().bucket_prefixes()
    assert {"s3://", "gs://", "r2://"} <= prefixes
