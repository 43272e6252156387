"""Render a recipe's `launch: {kind: sky}` into a SkyPilot task, from the template `sky/train.yaml`. Pure.

    render_task(...) -> task (a YAML mapping)   to_yaml(task) -> text, parsed by SkyPilot's own Task.from_yaml

The node sees the same layout as the local launcher: the run directory is the workdir (the worker runs
there, reading `recipe.yaml`), every data file the run's recipe names (train, eval, each `data.mix` source) is
mounted where the worker opens it (the same path relative to the workdir, or the same absolute path), and
LIFECYCLE_OUTPUT_DIR points at the run's folder in the bucket, mounted with MOUNT_CACHED. That mode writes to
a local cache and uploads in the background, so after a preemption the bucket may hold a checkpoint whose
newest files never arrived: the commit marker plus the manifest check in lifecycle.launch.checkpoints make
resume skip it. (SkyPilot waits for the uploads to finish before it marks a job done.)
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from lifecycle.errors import LaunchError
from lifecycle.launch.command import OUTPUT_ENV, worker_command
from lifecycle.launch.remote_env import Payload
from lifecycle.recipe.schema import Placement, SkyLaunch

TEMPLATE = Path(__file__).resolve().parents[2] / "sky" / "train.yaml"
REMOTE_OUTPUT = "/lifecycle/output"
REMOTE_WORKDIR = "~/sky_workdir"  # where SkyPilot puts the workdir on every node (sky.skylet.constants)
RECOVERY_STRATEGY = "EAGER_NEXT_REGION"  # after a preemption, try the next region first rather than wait


def accelerator_spec(text: str) -> tuple[str, int]:
    """'H100:8' -> ('H100', 8); 'H100' -> ('H100', 1)."""
    name, _, count = text.partition(":")
    return name, int(count) if count else 1


JOB_PREFIX = "lifecycle-"  # every job and cluster this platform launches (lifecycle jobs list filters on it)
MAX_NAME = 63  # SkyPilot's (and most clouds') limit on a cluster name
# The end of a run id that tells runs of one recipe apart: `-<YYYYmmdd-HHMMSS>-<6 hex>` (lifecycle.runs)
_RUN_TAIL = re.compile(r"-\d{8}-\d{6}(-[0-9a-f]{1,12})?$")


def job_name(run_id: str) -> str:
    """`lifecycle-<run id>` as a name SkyPilot accepts for a job and a cluster (lower-case letters, digits,
    single dashes, at most 63 characters). A long recipe name is shortened, never the run id's time and random
    tail: the rerun of a run finds its managed job by this name, so two runs must never share one."""
    slug = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", run_id.lower())).strip("-")
    name = JOB_PREFIX + slug
    if len(name) <= MAX_NAME:
        return name
    found = _RUN_TAIL.search(slug)
    # a run id of another shape keeps a digest of itself instead, still unique to it
    tail = found.group(0) if found else "-" + hashlib.sha256(run_id.encode()).hexdigest()[:12]
    head = slug[: found.start() if found else len(slug)]
    return JOB_PREFIX + head[: MAX_NAME - len(JOB_PREFIX) - len(tail)].rstrip("-") + tail


def output_uri(bucket: str, run_id: str) -> str:
    """The run's own folder in the bucket: checkpoints and the final model of exactly this run."""
    return f"{bucket.rstrip('/')}/{run_id}"


def infra(placement: Placement) -> str | None:
    """A placement as SkyPilot's `infra` string: cloud[/region[/zone]], '*' for an unset cloud or region."""
    if placement.cloud is None and placement.region is None and placement.zone is None:
        return None
    parts = [placement.cloud or "*"]
    if placement.region or placement.zone:
        parts.append(placement.region or "*")
    if placement.zone:
        parts.append(placement.zone)
    return "/".join(parts)


def render_task(
    *,
    name: str,
    run_dir: Path,
    launch: SkyLaunch,
    output: str,
    data_files: Mapping[str, Path],
    payload: Payload,
    template: Path = TEMPLATE,
) -> CommentedMap:
    """The SkyPilot task for one run. `data_files` maps where the worker opens each data file on the node (a
    path relative to the run directory, the workdir, or an absolute path) to the local file mounted there."""
    task = _load_template(template)
    task["name"] = name
    task["workdir"] = str(run_dir.resolve())
    task["num_nodes"] = launch.nodes
    task["resources"] = _resources(launch)
    envs = task.setdefault("envs", CommentedMap())
    envs[OUTPUT_ENV] = REMOTE_OUTPUT
    envs["LIFECYCLE_WHEEL"] = payload.wheel
    envs["LIFECYCLE_CONSTRAINTS"] = payload.constraints
    envs["LIFECYCLE_PYTHON"] = payload.python
    mounts = CommentedMap()
    mounts[REMOTE_OUTPUT] = CommentedMap([("source", output), ("mode", "MOUNT_CACHED")])
    for remote, local in sorted(data_files.items()):
        mounts[remote if remote.startswith("/") else f"{REMOTE_WORKDIR}/{remote}"] = str(local.resolve())
    task["file_mounts"] = mounts
    task["run"] = worker_command()
    return task


def _resources(launch: SkyLaunch) -> CommentedMap:
    res = CommentedMap()
    res["accelerators"] = launch.accelerators
    res["use_spot"] = launch.use_spot
    res["disk_size"] = launch.disk_size
    if launch.managed:
        res["job_recovery"] = CommentedMap(
            [("strategy", RECOVERY_STRATEGY), ("max_restarts_on_errors", launch.max_restarts_on_errors)]
        )
    else:  # a plain cluster tears itself down once idle, even if this machine is gone by then
        res["autostop"] = CommentedMap([("idle_minutes", launch.idle_minutes_to_autostop), ("down", True)])
    places = [p for p in (infra(p) for p in launch.placements) if p is not None]
    if len(places) == 1:
        res["infra"] = places[0]
    elif places:
        res["ordered"] = [CommentedMap([("infra", p)]) for p in places]
    return res


def to_yaml(task: Mapping[str, Any]) -> str:
    yaml = YAML(typ="rt")
    yaml.width = 4096  # keep long commands on one line
    out = io.StringIO()
    yaml.dump(task, out)
    return out.getvalue()


def _load_template(template: Path) -> CommentedMap:
    try:
        data = YAML(typ="rt").load(template.read_text())
    except OSError as exc:
        raise LaunchError(f"the SkyPilot task template {template} cannot be read: {exc}") from None
    if not isinstance(data, CommentedMap) or not isinstance(data.get("setup"), str):
        raise LaunchError(
            f"{template}: not a SkyPilot task template (expected a mapping with a `setup` script)"
        )
    return data
