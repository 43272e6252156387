"""The real SkyPilot API server on this machine answers a launch with the clear no-cloud error.

Runs in a subprocess with its own SKY_RUNTIME_DIR and API server port, so it neither uses nor disturbs a
server or state of the person running the tests, and stops the server it started. No internet here: first
SkyPilot cannot download its catalog (a clear error too); with a seeded `common/accelerators.csv` the launch
gets as far as SkyPilot's NoCloudAccessError (no bucket) or "no cloud storage" (with the run's bucket).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from rich.console import Console

    from lifecycle.errors import LifecycleError
    from lifecycle.launch.sky_client import SkyClient
    from lifecycle.launch.sky_launch import launch_sky
    from lifecycle.recipe.load import load_recipe

    runtime, recipe_path, run_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    client = SkyClient()
    task = run_dir / "task.yaml"
    no_bucket = run_dir / "task-no-bucket.yaml"
    out = {}

    def attempt(label, fn):
        start = time.monotonic()
        try:
            fn()
            out[label] = {"error": None}
        except LifecycleError as exc:
            out[label] = {"error": type(exc).__name__, "message": str(exc)}
        out[label]["seconds"] = round(time.monotonic() - start, 2)

    try:
        # offline, nothing seeded: SkyPilot (client side, then the server) tries to download its catalog
        attempt("no_catalog", lambda: client.launch_managed(no_bucket, "lifecycle-api-test", secrets={}))
        seed = runtime / ".sky" / "catalogs" / "v8" / "common"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "accelerators.csv").write_text('AcceleratorName,Clouds\\nH100,"[\\'AWS\\', \\'GCP\\']"\\n')
        attempt("managed", lambda: client.launch_managed(no_bucket, "lifecycle-api-test", secrets={}))
        attempt("managed_bucket", lambda: client.launch_managed(task, "lifecycle-api-test", secrets={}))
        attempt("cluster", lambda: client.launch_cluster(
            no_bucket, "lifecycle-api-test", idle_minutes_to_autostop=1, secrets={}))
        attempt("down_absent", lambda: client.down("lifecycle-api-test"))
        out["cluster_exists"] = client.cluster_exists("lifecycle-api-test")
        loaded = load_recipe(recipe_path)
        attempt("launch_sky", lambda: launch_sky(
            loaded, run_dir / "run", client, dry_run=False, console=Console(file=sys.stderr)))
        attempt("jobs_list", lambda: out.update(jobs=len(client.managed_jobs())))
    finally:
        import sky
        sky.api_stop()
    print("RESULT " + json.dumps(out))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_launch_on_this_machine_ends_in_the_clear_no_cloud_error(tmp_path: Path) -> None:
    from lifecycle.launch import remote_env
    from lifecycle.launch.sky_task import job_name, output_uri, render_task, to_yaml
    from lifecycle.recipe.load import data_files, load_recipe
    from lifecycle.recipe.schema import SkyLaunch

    recipe = ROOT / "recipes" / "llama-8b-lora-h100.yaml"
    loaded = load_recipe(recipe)
    launch = loaded.recipe.launch
    assert isinstance(launch, SkyLaunch) and launch.bucket
    run_dir = tmp_path / "work"
    (run_dir / "run").mkdir(parents=True)
    task = render_task(
        name=job_name("api-test"),
        run_dir=run_dir / "run",
        launch=launch,
        output=output_uri(launch.bucket, "api-test"),
        data_files={f"data/{k}.jsonl": v for k, v in data_files(loaded.recipe.data).items()},
        payload=remote_env.planned_payload(),
    )
    (run_dir / "task.yaml").write_text(to_yaml(task))
    del task["file_mounts"]["/lifecycle/output"]
    (run_dir / "task-no-bucket.yaml").write_text(to_yaml(task))

    runtime = tmp_path / "sky-runtime"
    runtime.mkdir()
    env = {
        **os.environ,
        "SKY_RUNTIME_DIR": str(runtime),
        "SKYPILOT_API_SERVER_LOCAL_PORT": str(free_port()),
        "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
    }
    env.pop("SKYPILOT_API_SERVER_ENDPOINT", None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(runtime), str(recipe), str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT ") :])
    print(json.dumps(got, indent=1))  # timings and messages, for -s

    assert got["no_catalog"]["error"] == "NoCloudError"
    assert "cannot download its catalog" in got["no_catalog"]["message"]
    assert "sky check" in got["no_catalog"]["message"]
    for label in ("managed", "cluster"):  # SkyPilot's NoCloudAccessError, as one line
        assert got[label]["error"] == "NoCloudError", got[label]
        assert got[label]["message"].startswith("no cloud is enabled for SkyPilot: run `sky check`")
        assert "\n" not in got[label]["message"]
    assert got["managed_bucket"]["error"] == "NoCloudError"
    assert (
        "bucket s3://my-lifecycle-bucket/checkpoints/api-test cannot be mounted"
        in got["managed_bucket"]["message"]
    )
    assert got["down_absent"]["error"] is None  # tearing down a cluster that never came up is fine
    assert got["cluster_exists"] is False
    assert got["launch_sky"]["error"] == "NoCloudError"  # the whole flow, from the shipped recipe
    # No wall-clock bound per call (35 s and more on a busy 2-core machine): a launch that hangs instead of
    # failing is caught by the subprocess timeout above; the seconds are printed for -s.
