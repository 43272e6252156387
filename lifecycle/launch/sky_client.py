"""The one module that imports SkyPilot. Everything else talks to `SkyBackend`, a small Protocol.

`SkyClient` speaks SkyPilot 0.14's SDK: every call goes through the local API server and returns a request
id, resolved with `sky.get` (or `sky.stream_and_get`, which also prints the request's logs). Catalog lookups
(accelerator names, prices) read SkyPilot's catalog files directly and need no server and no cloud; offline
and without a seeded catalog they report "unavailable" instead of failing.

SkyPilot's exceptions become the platform's own, one line each: no cloud enabled -> NoCloudError telling the
user to run `sky check`; everything else -> LaunchError. Tests inject a stand-in SDK with the same signatures.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol

from lifecycle.errors import LaunchError, NoCloudError

NO_CLOUD = (
    "no cloud is enabled for SkyPilot: run `sky check` to see which credentials are missing, set one up "
    "(https://docs.skypilot.co/en/latest/getting-started/installation.html), then launch again"
)
NO_CLOUD_STORAGE = (
    "no cloud storage is enabled for SkyPilot, so the run's bucket {bucket} cannot be mounted: run "
    "`sky check` and enable the cloud that owns the bucket"
)
NO_CATALOG = (
    "SkyPilot cannot download its catalog ({detail}): this machine has no internet access, so no cloud can "
    "be reached from it either. Connect it, then run `sky check`"
)
NO_NETWORK = (
    "SkyPilot cannot reach the internet from this machine ({detail}), so no cloud can be reached from it "
    "either. Connect it, then run `sky check`"
)
_FINAL_GOOD = "SUCCEEDED"


# ----------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ManagedJob:
    """One managed job, as `sky jobs queue` reports it."""

    job_id: int
    name: str | None
    status: str  # a sky.jobs.ManagedJobStatus value: PENDING, RUNNING, RECOVERING, SUCCEEDED, FAILED, ...
    resources: str | None = None
    duration_s: float | None = None
    recovery_count: int = 0
    submitted_at: float | None = None
    end_at: float | None = None
    failure_reason: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in ("SUCCEEDED", "CANCELLED") or self.status.startswith("FAILED")

    @property
    def succeeded(self) -> bool:
        return self.status == _FINAL_GOOD


@dataclass(frozen=True)
class Offer:
    """One catalog offering of an accelerator count: the price of a whole node per hour."""

    cloud: str
    instance_type: str | None
    region: str | None
    usd_per_node_hour: float


@dataclass(frozen=True)
class AcceleratorNames:
    names: frozenset[str]
    source: Literal["catalog", "bundled"]  # the downloaded catalog, or the GPU names SkyPilot ships offline


@dataclass(frozen=True)
class TaskSummary:
    """What SkyPilot's own parser made of a task YAML."""

    name: str | None
    num_nodes: int
    run: str | None
    setup: str | None
    workdir: str | None
    envs: dict[str, str]
    resources: list[str]  # SkyPilot's rendering of each candidate, in order of preference
    file_mounts: dict[str, str]  # remote path -> local path
    storage_mounts: dict[str, str] = field(default_factory=dict)  # remote path -> "SOURCE (MODE)"


# ----------------------------------------------------------------------------------------------- protocol


class SkyBackend(Protocol):
    """What the launcher needs from SkyPilot."""

    def parse_task(self, task_yaml: Path, *, check_paths: bool) -> TaskSummary: ...
    def accelerator_names(self) -> AcceleratorNames: ...
    def offers(
        self, accelerator: str, count: int, *, use_spot: bool, cloud: str | None, region: str | None
    ) -> list[Offer] | None: ...
    def bucket_prefixes(self) -> frozenset[str]: ...
    def launch_managed(self, task_yaml: Path, name: str, *, secrets: Mapping[str, str]) -> int: ...
    def launch_cluster(
        self,
        task_yaml: Path,
        cluster_name: str,
        *,
        idle_minutes_to_autostop: int,
        down: bool = True,
        secrets: Mapping[str, str],
    ) -> int: ...
    def tail_managed(self, job_id: int, *, follow: bool = True, tail: int | None = None) -> int: ...
    def tail_cluster(self, cluster_name: str, job_id: int, *, follow: bool = True) -> int: ...
    def managed_job(self, job_id: int) -> ManagedJob: ...
    def managed_jobs(self, *, skip_finished: bool = False) -> list[ManagedJob]: ...
    def cancel_managed(self, job_id: int) -> None: ...
    def down(self, cluster_name: str) -> None: ...
    def cluster_exists(self, cluster_name: str) -> bool: ...
    def sync_down(self, uri: str, dest: Path, *, is_dir: bool) -> bool: ...


# ----------------------------------------------------------------------------------------------- the client


class SkyClient:
    """SkyBackend over the real SDK (`import sky`), or over a stand-in module with the same functions."""

    def __init__(self, sdk: ModuleType | Any | None = None):
        if sdk is None:
            import sky

            sdk = sky
        self._sdk = sdk

    # tasks ----------------------------------------------------------------------------------------------
    def parse_task(self, task_yaml: Path, *, check_paths: bool) -> TaskSummary:
        """Parse with `sky.Task.from_yaml` (schema; typos get "did you mean"); maybe check local paths."""
        try:
            task = self._sdk.Task.from_yaml(str(task_yaml))
            if check_paths:
                task.expand_and_validate_workdir()
                task.expand_and_validate_file_mounts()
        except (ValueError, self._sdk.exceptions.InvalidSkyPilotConfigError) as exc:
            raise LaunchError(f"SkyPilot rejects the task {task_yaml}: {_one_line(exc)}") from None
        storage = {
            dest: f"{getattr(s, 'source', None)} ({getattr(getattr(s, 'mode', None), 'value', '?')})"
            for dest, s in (task.storage_mounts or {}).items()
        }
        return TaskSummary(
            name=task.name,
            num_nodes=task.num_nodes,
            run=task.run if isinstance(task.run, str) else None,
            setup=task.setup,
            workdir=task.workdir if isinstance(task.workdir, str) else None,
            envs=dict(task.envs),
            resources=[str(r) for r in task.resources],
            file_mounts=dict(task.file_mounts or {}),
            storage_mounts=storage,
        )

    def _load(self, task_yaml: Path, secrets: Mapping[str, str]) -> Any:
        task = self._sdk.Task.from_yaml(str(task_yaml))
        if secrets:
            task.update_secrets(dict(secrets))
        return task

    # catalog (local files; no API server) ---------------------------------------------------------------
    def accelerator_names(self) -> AcceleratorNames:
        """Names from SkyPilot's catalog; offline without one, the GPU names SkyPilot itself ships."""
        with _quiet(self._sdk):
            try:
                frame = self._sdk.catalog.common.read_catalog("common/accelerators.csv")
                names = frozenset(str(n) for n in frame["AcceleratorName"])
                return AcceleratorNames(names=names, source="catalog")
            except Exception:  # no internet and no seeded catalog: fall back to the bundled list
                from sky.utils import gpu_names

                return AcceleratorNames(names=frozenset(gpu_names.CANONICAL_GPU_NAMES), source="bundled")

    def offers(
        self, accelerator: str, count: int, *, use_spot: bool, cloud: str | None, region: str | None
    ) -> list[Offer] | None:
        """Catalog offers of `accelerator:count` per node, cheapest first; None if no catalog is readable."""
        clouds = [cloud.lower()] if cloud else list(_PRICED_CLOUDS)
        found: list[Offer] = []
        readable = False
        with _quiet(self._sdk):
            for name in clouds:
                try:
                    listed = self._sdk.catalog.list_accelerators(
                        gpus_only=True,
                        name_filter=f"^{re.escape(accelerator)}$",
                        region_filter=f"^{re.escape(region)}$" if region else None,
                        quantity_filter=count,
                        clouds=name,
                        case_sensitive=False,
                        all_regions=True,
                    )
                except Exception:  # this cloud's catalog is not available (offline) or has no such listing
                    continue
                readable = True
                for infos in listed.values():
                    for info in infos:
                        price = info.spot_price if use_spot else info.price
                        if price is not None and price == price and price > 0:  # NaN-safe: NaN != NaN
                            found.append(Offer(info.cloud, info.instance_type, info.region, float(price)))
        if not readable:
            return None
        return sorted(found, key=lambda o: (o.usd_per_node_hour, o.cloud, o.region or ""))

    def bucket_prefixes(self) -> frozenset[str]:
        prefixes = set()
        for store in self._sdk.StoreType:
            try:
                prefixes.add(store.store_prefix())
            except Exception:  # e.g. VOLUME has no URL form
                continue
        return frozenset(prefixes)

    # launching ------------------------------------------------------------------------------------------
    def launch_managed(self, task_yaml: Path, name: str, *, secrets: Mapping[str, str]) -> int:
        """`sky.jobs.launch`: SkyPilot's controller provisions, recovers from preemptions, and tears down."""
        with _translate(self._sdk, task_yaml):
            request = self._sdk.jobs.launch(self._load(task_yaml, secrets), name=name)
            job_ids, _handle = self._sdk.stream_and_get(request)[:2]
        return _one_job_id(job_ids)

    def launch_cluster(
        self,
        task_yaml: Path,
        cluster_name: str,
        *,
        idle_minutes_to_autostop: int,
        down: bool = True,
        secrets: Mapping[str, str],
    ) -> int:
        """`sky.launch` with autodown; the caller must call `down()` however the job ends."""
        with _translate(self._sdk, task_yaml):
            request = self._sdk.launch(
                self._load(task_yaml, secrets),
                cluster_name=cluster_name,
                idle_minutes_to_autostop=idle_minutes_to_autostop,
                down=down,
            )
            job_id, _handle = self._sdk.stream_and_get(request)[:2]
        return _one_job_id(job_id)

    # following ------------------------------------------------------------------------------------------
    def tail_managed(self, job_id: int, *, follow: bool = True, tail: int | None = None) -> int:
        """Print the job's logs; with `follow`, block until it ends. Returns SkyPilot's JobExitCode value."""
        with _translate(self._sdk):
            code = self._sdk.jobs.tail_logs(job_id=job_id, follow=follow, tail=tail)
        return 0 if code is None else int(code)

    def tail_cluster(self, cluster_name: str, job_id: int, *, follow: bool = True) -> int:
        with _translate(self._sdk):
            code = self._sdk.tail_logs(cluster_name, job_id, follow)
        return 0 if code is None else int(code)

    def managed_job(self, job_id: int) -> ManagedJob:
        jobs = self._queue(job_ids=[job_id], skip_finished=False)
        for job in jobs:
            if job.job_id == job_id:
                return job
        raise LaunchError(f"managed job {job_id} does not exist (see `lifecycle jobs list`)")

    def managed_jobs(self, *, skip_finished: bool = False) -> list[ManagedJob]:
        return self._queue(job_ids=None, skip_finished=skip_finished)

    def _queue(self, *, job_ids: list[int] | None, skip_finished: bool) -> list[ManagedJob]:
        with _translate(self._sdk):
            try:
                result = self._sdk.get(
                    self._sdk.jobs.queue_v2(refresh=False, skip_finished=skip_finished, job_ids=job_ids)
                )
            except self._sdk.exceptions.ClusterNotUpError:
                return []  # no jobs controller yet: "No in-progress managed jobs."
        records = result[0] if isinstance(result, tuple) else result  # (jobs, total, counts, total) or a list
        return [_managed_job(record) for record in records]

    def cancel_managed(self, job_id: int) -> None:
        with _translate(self._sdk):
            self._sdk.get(self._sdk.jobs.cancel(job_ids=[job_id]))

    def down(self, cluster_name: str) -> None:
        with _translate(self._sdk):
            try:
                self._sdk.get(self._sdk.down(cluster_name))
            except self._sdk.exceptions.ClusterDoesNotExist:
                return  # already gone: that is what we wanted

    def cluster_exists(self, cluster_name: str) -> bool:
        with _translate(self._sdk):
            records = self._sdk.get(self._sdk.status(cluster_names=[cluster_name]))
        return any(_field(r, "name") == cluster_name for r in records)

    # SkyServe -------------------------------------------------------------------------------------------
    def serve_up(
        self, service_yaml: Path, service_name: str, *, workdir: Path, secrets: Mapping[str, str]
    ) -> str:
        """`sky.serve.up`: the controller (started on first use) launches the replicas; returns the endpoint."""
        with _translate(self._sdk, service_yaml):
            task = self._load(service_yaml, secrets)
            task.workdir = str(workdir)
            result = self._sdk.stream_and_get(self._sdk.serve.up(task, service_name))
        return str(result[1]) if isinstance(result, (tuple, list)) and len(result) > 1 else ""

    def serve_update(
        self,
        service_yaml: Path,
        service_name: str,
        *,
        mode: Literal["rolling", "blue_green"],
        workdir: Path,
        secrets: Mapping[str, str],
    ) -> None:
        """`sky.serve.update`: rolling replaces replicas a few at a time; blue_green moves traffic only once every
        new replica is ready."""
        with _translate(self._sdk, service_yaml):
            task = self._load(service_yaml, secrets)
            task.workdir = str(workdir)
            update_mode = self._sdk.serve.UpdateMode(mode)
            self._sdk.stream_and_get(self._sdk.serve.update(task, service_name, mode=update_mode))

    def serve_down(self, service_name: str) -> None:
        with _translate(self._sdk):
            self._sdk.get(self._sdk.serve.down(service_name))

    def services(self) -> dict[str, str]:
        """Every SkyServe service: name -> status (READY, REPLICA_INIT, FAILED, ...); none before a controller."""
        with _translate(self._sdk):
            try:
                records = self._sdk.get(self._sdk.serve.status(None))
            except self._sdk.exceptions.ClusterNotUpError:
                return {}  # no serve controller yet: no services
            except RuntimeError as exc:  # the server checks its internet connection before anything else
                if "network error" not in str(exc):
                    raise
                raise NoCloudError(NO_NETWORK.format(detail=f"sky serve status: {_one_line(exc)}")) from None
        found = {}
        for record in records:
            status = _field(record, "status")
            found[str(_field(record, "name"))] = str(getattr(status, "value", status))
        return found

    # buckets --------------------------------------------------------------------------------------------
    def sync_down(self, uri: str, dest: Path, *, is_dir: bool) -> bool:
        """Copy a bucket folder (or one file) to `dest` with the cloud's CLI, as SkyPilot itself does.

        False when there is nothing at `uri`. A failing folder copy raises (credentials, network); a failing
        file copy reads as "absent", since object stores answer both with an error.
        """
        store = self._sdk.cloud_stores.get_storage_from_path(uri)
        if is_dir:
            dest.mkdir(parents=True, exist_ok=True)
            command = store.make_sync_dir_command(uri.rstrip("/") + "/", shlex.quote(str(dest)))
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            command = store.make_sync_file_command(uri, shlex.quote(str(dest)))
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
        if done.returncode != 0:
            if not is_dir:
                return False
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise LaunchError(f"could not copy {uri} to {dest}: " + " | ".join(tail or ["(no output)"]))
        return dest.is_file() if not is_dir else any(dest.iterdir())


# Clouds whose catalogs carry public prices: SkyPilot's ALL_CLOUDS minus Kubernetes, SSH, Slurm, vSphere.
_PRICED_CLOUDS = (
    "aws",
    "azure",
    "gcp",
    "ibm",
    "lambda",
    "scp",
    "oci",
    "runpod",
    "vast",
    "cudo",
    "fluidstack",
    "paperspace",
    "primeintellect",
    "do",
    "nebius",
    "hyperbolic",
    "seeweb",
    "shadeform",
    "yotta",
    "mithril",
    "verda",
)


# ----------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _translate(sdk: Any, task_yaml: Path | None = None) -> Iterator[None]:
    """SkyPilot's exceptions -> the platform's, one line each. KeyboardInterrupt passes through."""
    exc_mod = sdk.exceptions
    try:
        yield
    except exc_mod.NoCloudAccessError:
        raise NoCloudError(NO_CLOUD) from None
    except exc_mod.NotSupportedError as exc:
        if "no cloud storage" in str(exc):
            raise NoCloudError(NO_CLOUD_STORAGE.format(bucket=_bucket_of(task_yaml))) from None
        raise LaunchError(f"SkyPilot: {_one_line(exc)}") from None
    except exc_mod.CloudError as exc:
        if getattr(exc, "cloud_provider", "") == "requests" or "catalog" in str(exc):
            raise NoCloudError(NO_CATALOG.format(detail=_catalog_detail(exc))) from None
        raise LaunchError(f"SkyPilot: {_one_line(exc)}") from None
    except exc_mod.ResourcesUnavailableError as exc:
        raise LaunchError(f"no cloud could provide the requested resources: {_one_line(exc)}") from None
    except exc_mod.ApiServerConnectionError as exc:
        raise LaunchError(
            f"cannot reach the SkyPilot API server ({_one_line(exc)}): try `sky api start`"
        ) from None
    except exc_mod.RequestCancelled:
        raise LaunchError("the SkyPilot request was cancelled") from None
    except (LaunchError, KeyboardInterrupt):
        raise
    except OSError as exc:  # requests' ConnectionError when a catalog download fails on the client side
        if "raw.githubusercontent.com" in str(exc) or "catalog" in str(exc):
            raise NoCloudError(NO_CATALOG.format(detail=_catalog_detail(exc))) from None
        raise LaunchError(f"SkyPilot: {_one_line(exc)}") from None
    except Exception as exc:  # anything else SkyPilot raises (it also uses ValueError and RuntimeError)
        raise LaunchError(f"SkyPilot: {type(exc).__name__}: {_one_line(exc)}") from exc


@contextlib.contextmanager
def _quiet(sdk: Any) -> Iterator[None]:
    """Silence SkyPilot's own logging (e.g. "Failed to fetch ... catalog" on every offline read)."""
    sky_logging = getattr(sdk, "sky_logging", None)
    if sky_logging is None:
        yield
        return
    with sky_logging.silent(), sky_logging.set_sky_logging_levels(logging.CRITICAL + 1):
        yield


def _one_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # SkyPilot colours some messages
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first if len(first) <= 400 else first[:397] + "..."


def _catalog_detail(exc: BaseException) -> str:
    """'common/accelerators.csv from raw.githubusercontent.com' out of a requests error."""
    text = str(exc)
    file = re.search(r"catalogs/v\d+/(\S+?\.csv)", text)
    host = re.search(r"host='([^']+)'", text)
    if file or host:
        return " from ".join(m.group(1) for m in (file, host) if m)
    return _one_line(exc)


def _one_job_id(value: int | Sequence[int] | None) -> int:
    """`sky.jobs.launch` resolves to a list of ids (one per job), `sky.launch` to one id; both may be None."""
    if isinstance(value, int):
        return value
    if value:
        return int(list(value)[0])
    raise LaunchError("SkyPilot accepted the launch but returned no job id")


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def _managed_job(record: Any) -> ManagedJob:
    status = _field(record, "status")
    return ManagedJob(
        job_id=int(_field(record, "job_id")),
        name=_field(record, "job_name"),
        status=str(getattr(status, "value", status)),
        resources=_field(record, "resources"),
        duration_s=_field(record, "job_duration"),
        recovery_count=int(_field(record, "recovery_count") or 0),
        submitted_at=_field(record, "submitted_at"),
        end_at=_field(record, "end_at"),
        failure_reason=_field(record, "failure_reason"),
    )


def _bucket_of(task_yaml: Path | None) -> str:
    if task_yaml is None or not task_yaml.is_file():
        return "(unknown)"
    match = re.search(r"source:\s*(\S+://\S+)", task_yaml.read_text())
    return match.group(1) if match else "(unknown)"
