"""`lifecycle jobs list|logs|cancel`: the managed SkyPilot jobs that `lifecycle train` launched."""

from __future__ import annotations

import datetime as dt
import json

import typer

from lifecycle.cli.output import console

app = typer.Typer(help="Managed training jobs on SkyPilot: list, follow logs, cancel.", no_args_is_help=True)


@app.command("list")
def list_jobs(
    all_jobs: bool = typer.Option(False, "--all", help="Also jobs not launched by lifecycle."),
    active: bool = typer.Option(False, "--active", help="Only jobs that have not finished."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Managed jobs, newest first: id, name, status, resources, duration, preemption recoveries."""
    from rich.table import Table

    from lifecycle.launch.sky_client import SkyClient
    from lifecycle.launch.sky_task import JOB_PREFIX

    jobs = SkyClient().managed_jobs(skip_finished=active)
    jobs = [j for j in jobs if all_jobs or (j.name or "").startswith(JOB_PREFIX)]
    jobs.sort(key=lambda j: j.job_id, reverse=True)
    if as_json:
        console.print_json(json.dumps([j.__dict__ for j in jobs]))
        return
    if not jobs:
        console.print(
            "no managed jobs" + ("" if all_jobs else " launched by lifecycle (--all shows every job)")
        )
        return
    table = Table(box=None)
    for column in ("id", "name", "status", "resources", "submitted", "duration", "recoveries"):
        table.add_column(column, overflow="fold")  # never cut a job name or id short
    for job in jobs:
        submitted = (
            dt.datetime.fromtimestamp(job.submitted_at).strftime("%Y-%m-%d %H:%M") if job.submitted_at else ""
        )
        duration = f"{job.duration_s / 3600:.2f} h" if job.duration_s else ""
        table.add_row(
            str(job.job_id),
            job.name or "",
            job.status,
            job.resources or "",
            submitted,
            duration,
            str(job.recovery_count),
        )
    console.print(table)


@app.command("logs")
def logs(
    job_id: int = typer.Argument(..., help="Managed job id (see `lifecycle jobs list`)."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Keep streaming until the job ends."),
    tail: int | None = typer.Option(None, "--tail", min=1, help="Only the last N lines."),
) -> None:
    """Stream a managed job's logs; exit with SkyPilot's job exit code (0 ok, 100 failed, 103 cancelled)."""
    from lifecycle.launch.sky_client import SkyClient

    code = SkyClient().tail_managed(job_id, follow=follow, tail=tail)
    if follow and code:
        raise typer.Exit(code)


@app.command("cancel")
def cancel(
    job_id: int = typer.Argument(..., help="Managed job id (see `lifecycle jobs list`)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Cancel a managed job: SkyPilot stops it and tears its cluster down; checkpoints stay in the bucket."""
    from lifecycle.launch.sky_client import SkyClient

    client = SkyClient()
    job = client.managed_job(job_id)
    if job.terminal:
        console.print(f"job {job_id} ({job.name}) already ended: {job.status}")
        return
    if not yes:
        typer.confirm(f"cancel managed job {job_id} ({job.name}, {job.status})?", abort=True)
    client.cancel_managed(job_id)
    console.print(f"cancelled job {job_id}; SkyPilot is tearing its cluster down")
