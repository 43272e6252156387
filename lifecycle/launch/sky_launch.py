"""Rent GPUs only for the run: launch the training stage on SkyPilot, follow it, and bring the weights home.

    launch_sky(loaded recipe, run dir, backend, dry_run=...) -> SkyLaunchResult | DryRunPlan

1. Check what SkyPilot would refuse later (unknown accelerator, an accelerator count no cloud offers, a bucket
   it cannot mount, a local base model or data file a node cannot see) and report it like any recipe error
   (sky_preflight).
2. Render the task (sky_task), parse it with SkyPilot's own parser, price it (cost).
3. --dry-run: print the task, the resource plan and the estimated cost; launch nothing.
4. Otherwise a managed job (default: SkyPilot's controller provisions, recovers spot preemptions, tears down),
   or a plain cluster with autodown, torn down here however the job ends. Logs stream to the terminal.
5. On success, copy the output from the bucket into `<run>/train` and verify it against its manifests
   (bring_home), then record the cost: the catalog (or recipe) price x the measured duration.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console

from lifecycle import interrupt
from lifecycle.errors import LaunchError, LifecycleError, UserInputError
from lifecycle.launch import cost as costs
from lifecycle.launch import remote_env
from lifecycle.launch.bring_home import BroughtHome, OutputStore, bring_home
from lifecycle.launch.command import worker_command
from lifecycle.launch.sky_client import ManagedJob, SkyBackend, TaskSummary
from lifecycle.launch.sky_preflight import OfferCache, data_mounts, preflight
from lifecycle.launch.sky_task import (
    RECOVERY_STRATEGY,
    REMOTE_OUTPUT,
    accelerator_spec,
    infra,
    job_name,
    output_uri,
    render_task,
    to_yaml,
)
from lifecycle.manifest import write_json_atomic
from lifecycle.recipe.load import LoadedRecipe
from lifecycle.recipe.schema import SkyLaunch
from lifecycle.runs import Cost, RunDir, new_run_id

TASK_FILE = f"{remote_env.SHIP_DIR}/task.yaml"
POLL_S = 10.0
# Kept out of the workdir sync: data goes by file mount, and outputs come back through the bucket.
SKYIGNORE = "data/\ntrain/\nresults/\n"


@dataclass(frozen=True)
class DryRunPlan:
    task_yaml: str
    summary: TaskSummary
    mode: Literal["managed", "cluster"]
    rate: costs.HourlyRate
    estimate: Cost
    accelerators_checked_by: str  # "catalog" or "bundled"


@dataclass(frozen=True)
class SkyLaunchResult:
    mode: Literal["managed", "cluster"]
    name: str
    job_id: int
    status: str
    recoveries: int
    duration_s: float
    output_uri: str
    brought_home: BroughtHome
    cost: Cost
    task_file: Path


@dataclass(frozen=True)
class BucketStore:
    """A run's output folder in its bucket, read with the cloud's CLI (a bring_home.OutputStore)."""

    backend: SkyBackend
    uri: str

    def fetch(self, name: str, dest: Path) -> bool:
        return self.backend.sync_down(f"{self.uri.rstrip('/')}/{name}", dest, is_dir="." not in name)


def launch_sky(
    loaded: LoadedRecipe,
    run_dir: Path,
    backend: SkyBackend,
    *,
    dry_run: bool,
    console: Console,
    secrets: Mapping[str, str] | None = None,
    expected_hours: float | None = None,
    store: OutputStore | None = None,
) -> SkyLaunchResult | DryRunPlan:
    """Launch (or plan) the training stage of `loaded` on SkyPilot. See the module docstring for the steps."""
    launch = loaded.recipe.launch
    if not isinstance(launch, SkyLaunch):
        raise UserInputError(
            f"{loaded.path}: launch.kind is {launch.kind!r}; use --on sky to launch on SkyPilot"
        )
    secrets = dict(secrets or {})
    offers = OfferCache(backend)
    names_source = preflight(loaded, backend, offers, run_dir)
    assert launch.bucket is not None  # preflight reports a missing bucket
    run_id = RunDir(run_dir).info().run_id if RunDir(run_dir).exists() else run_dir.name
    name = job_name(run_id)
    output = output_uri(launch.bucket, run_id)
    mode: Literal["managed", "cluster"] = "managed" if launch.managed else "cluster"

    payload = remote_env.planned_payload() if dry_run else remote_env.prepare_payload(run_dir)
    task = render_task(
        name=name,
        run_dir=run_dir,
        launch=launch,
        output=output,
        data_files=data_mounts(loaded, run_dir),
        payload=payload,
    )
    text = f"# Rendered by lifecycle from sky/train.yaml for run {run_id}; edit the recipe, not this file.\n"
    text += to_yaml(task)
    rate = costs.hourly_rate(launch, offers.lookup)
    estimated = costs.estimate(rate, expected_hours)

    if dry_run:
        with tempfile.TemporaryDirectory(prefix="lifecycle-dry-run-") as tmp:
            task_file = Path(tmp) / "task.yaml"
            task_file.write_text(text)
            summary = _parse(backend, task_file, check_paths=False)
        plan = DryRunPlan(text, summary, mode, rate, estimated, names_source)
        print_plan(plan, launch, output, secrets, expected_hours, console)
        return plan

    task_file = run_dir / TASK_FILE
    task_file.write_text(text)
    (run_dir / ".skyignore").write_text(SKYIGNORE)
    _parse(backend, task_file, check_paths=True)
    console.print(
        f"[bold]SkyPilot[/] {mode} {name}: {launch.nodes} x {launch.accelerators}"
        f"{' spot' if launch.use_spot else ''}; {costs.describe(rate, expected_hours)}"
    )
    start = time.monotonic()
    if mode == "managed":
        job = _run_managed(backend, task_file, name, secrets, console)
        duration = job.duration_s if job.duration_s else time.monotonic() - start
    else:
        job = _run_cluster(backend, task_file, name, launch, secrets, console)
        duration = time.monotonic() - start
    console.print(f"bringing the output home from {output}")
    brought = bring_home(store if store is not None else BucketStore(backend, output), run_dir / "train")
    spent = costs.actual(estimated, duration / 3600)
    console.print(
        f"[green]model verified[/] ({brought.manifest_digest[:12]}); cost ${spent.actual_usd:,.2f} "
        f"for {duration / 3600:.2f} h ({spent.source})"
    )
    return SkyLaunchResult(
        mode=mode,
        name=name,
        job_id=job.job_id,
        status=job.status,
        recoveries=job.recovery_count,
        duration_s=duration,
        output_uri=output,
        brought_home=brought,
        cost=spent,
        task_file=task_file,
    )


def _parse(backend: SkyBackend, task_file: Path, *, check_paths: bool) -> TaskSummary:
    summary = backend.parse_task(task_file, check_paths=check_paths)
    if summary.run != worker_command():  # the one command must never drift between local and cloud
        raise LaunchError(
            f"{task_file}: run is {summary.run!r}, not the training command {worker_command()!r}"
        )
    return summary


# ----------------------------------------------------------------------------------------------- running


def _run_managed(
    backend: SkyBackend, task_file: Path, name: str, secrets: Mapping[str, str], console: Console
) -> ManagedJob:
    # A rerun after Ctrl-C (or a lost connection) follows the job already running for this run, rather than
    # start a second one writing to the same bucket folder.
    running = [j for j in backend.managed_jobs(skip_finished=True) if j.name == name and not j.terminal]
    if running:
        job_id = running[0].job_id
        console.print(f"managed job [bold]{job_id}[/] ({name}) is already running for this run: following it")
    else:
        job_id = backend.launch_managed(task_file, name, secrets=secrets)
    write_json_atomic(task_file.with_name("job.json"), {"mode": "managed", "name": name, "job_id": job_id})
    console.print(
        f"managed job [bold]{job_id}[/] ({name}); logs follow. Ctrl-C detaches: the job keeps running "
        f"(`lifecycle jobs logs {job_id}`, `lifecycle jobs cancel {job_id}`)"
    )
    try:
        while True:
            backend.tail_managed(job_id, follow=True)
            job = backend.managed_job(job_id)
            if job.terminal:  # CANCELLED/FAILED* are set only after SkyPilot has torn the job's cluster down
                break
            time.sleep(POLL_S)  # the log stream ended early (a recovery, a dropped connection): follow again
    except (KeyboardInterrupt, interrupt.Interrupted):
        console.print(f"[yellow]detached[/] from managed job {job_id}; it keeps running on SkyPilot")
        raise
    if not job.succeeded:
        reason = f": {job.failure_reason}" if job.failure_reason else ""
        raise LaunchError(
            f"managed job {job_id} ended {job.status}{reason}. SkyPilot has released its GPUs; the committed "
            "checkpoints stay in the bucket, so launching this run again resumes from the newest one"
        )
    return job


def _run_cluster(
    backend: SkyBackend,
    task_file: Path,
    name: str,
    launch: SkyLaunch,
    secrets: Mapping[str, str],
    console: Console,
) -> ManagedJob:
    """A plain cluster, torn down in `finally` however the job ends (success, failure, Ctrl-C, any error)."""
    failed = True
    try:
        job_id = backend.launch_cluster(
            task_file,
            name,
            idle_minutes_to_autostop=launch.idle_minutes_to_autostop,
            down=True,
            secrets=secrets,
        )
        console.print(f"cluster [bold]{name}[/], job {job_id}; logs follow (Ctrl-C tears the cluster down)")
        code = backend.tail_cluster(name, job_id, follow=True)
        if code != 0:
            raise LaunchError(
                f"the training job on cluster {name} ended with SkyPilot exit code {code} "
                f"({_EXIT_CODES.get(code, 'failed')}); the committed checkpoints stay in the bucket"
            )
        failed = False
        return ManagedJob(job_id=job_id, name=name, status="SUCCEEDED")
    finally:
        _down(backend, name, console, raise_errors=not failed)


def _down(backend: SkyBackend, name: str, console: Console, *, raise_errors: bool) -> None:
    """Tear the cluster down and check that it is gone; never hide the error that brought us here."""
    try:
        backend.down(name)
        if backend.cluster_exists(name):
            raise LaunchError(f"cluster {name} still exists after `sky down`: run `sky down {name}` now")
        console.print(f"cluster {name} torn down")
    except LifecycleError as exc:
        if raise_errors:
            raise
        console.print(f"[red]could not tear down cluster {name}:[/] {exc}. Run `sky down {name}`.")


_CHECKED_BY = {"catalog": "SkyPilot's catalog", "bundled": "SkyPilot's GPU list (no catalog offline)"}
_EXIT_CODES = {
    100: "failed",
    101: "not finished",
    102: "not found",
    103: "cancelled",
}  # sky.exceptions.JobExitCode


# ----------------------------------------------------------------------------------------------- output


def print_plan(
    plan: DryRunPlan,
    launch: SkyLaunch,
    output: str,
    secrets: Mapping[str, str],
    expected_hours: float | None,
    console: Console,
) -> None:
    name, count = accelerator_spec(launch.accelerators)
    places = [p for p in (infra(p) for p in launch.placements) if p]
    console.print(plan.task_yaml, markup=False, highlight=False, soft_wrap=True)
    console.print("[bold]Resource plan[/]")
    rows = [
        (
            "mode",
            "managed job: SkyPilot provisions, recovers preemptions, and tears down when it ends"
            if plan.mode == "managed"
            else f"plain cluster (autodown after {launch.idle_minutes_to_autostop} idle min), down at end",
        ),
        (
            "nodes",
            f"{launch.nodes} x {launch.accelerators} = {launch.nodes * count} {name}, "
            f"{'spot' if launch.use_spot else 'on-demand'}, {launch.disk_size} GB disk each",
        ),
        (
            "placements",
            " -> ".join(places) + " (in order)" if places else "any enabled cloud (cheapest first)",
        ),
        (
            "recovery",
            f"{RECOVERY_STRATEGY}, up to {launch.max_restarts_on_errors} restart(s) on errors"
            if plan.mode == "managed"
            else "none (plain cluster)",
        ),
        ("output", f"{output} (mounted at {REMOTE_OUTPUT}, MOUNT_CACHED)"),
        (
            "checked",
            f"{name} against {_CHECKED_BY[plan.accelerators_checked_by]}; the task by sky.Task.from_yaml",
        ),
        ("skypilot", "; ".join(plan.summary.resources)),
        ("secrets", ", ".join(sorted(secrets)) + " (values not shown)" if secrets else "none"),
    ]
    for key, value in rows:
        console.print(f"  {key:<11} {value}", markup=False)
    console.print(f"[bold]Estimated cost[/] {costs.describe(plan.rate, expected_hours)}", highlight=False)
    console.print("Nothing was launched (--dry-run).")


# ----------------------------------------------------------------------------------------------- CLI glue


@dataclass(frozen=True)
class SkyLauncher:
    """The training stage's launcher for `launch.kind: sky` (see lifecycle.train.stage.Launcher)."""

    backend: SkyBackend
    console: Console
    secrets: Mapping[str, str] = field(default_factory=dict)
    expected_hours: float | None = None
    kind: str = "sky"

    @classmethod
    def from_settings(
        cls,
        settings: object,
        console: Console,
        secrets: Mapping[str, str] | None = None,
        expected_hours: float | None = None,
    ) -> SkyLauncher:
        from lifecycle.launch.sky_client import SkyClient

        return cls(
            backend=SkyClient(), console=console, secrets=dict(secrets or {}), expected_hours=expected_hours
        )

    def __call__(self, run: RunDir) -> Cost:
        from lifecycle.recipe.load import load_recipe

        result = launch_sky(
            load_recipe(run.recipe_path),
            run.path,
            self.backend,
            dry_run=False,
            console=self.console,
            secrets=self.secrets,
            expected_hours=self.expected_hours,
        )
        assert isinstance(result, SkyLaunchResult)
        return result.cost


def dry_run(
    loaded: LoadedRecipe,
    console: Console,
    *,
    backend: SkyBackend | None = None,
    run_dir: Path | None = None,
    secrets: Mapping[str, str] | None = None,
    expected_hours: float | None = None,
) -> DryRunPlan:
    """`lifecycle train RECIPE --dry-run` for a sky recipe: print the task, plan and cost; launch nothing."""
    if backend is None:
        from lifecycle.launch.sky_client import SkyClient

        backend = SkyClient()
    run_dir = run_dir or Path("mlruns") / "runs" / new_run_id(loaded.recipe.name)
    plan = launch_sky(
        loaded,
        run_dir,
        backend,
        dry_run=True,
        console=console,
        secrets=secrets,
        expected_hours=expected_hours,
    )
    assert isinstance(plan, DryRunPlan)
    return plan
