"""A stand-in for the `sky` SDK module: the cloud is the one thing that cannot exist here.

It speaks SkyPilot 0.14's protocol: every call is checked against the real function's signature
(`inspect.signature(real).bind(...)`), calls that go through the API server return a `RequestId` that only
`get`/`stream_and_get` resolve (once), and results have the real shapes: `jobs.launch` -> ([job_id], handle),
`launch` -> (job_id, handle), `jobs.queue_v2` -> ([ManagedJobRecord], total, status_counts, total_no_filter),
`status` -> [StatusResponse]. Errors are SkyPilot's own exception classes, raised where the real SDK raises
them (by `get`). Task parsing, exceptions and store types are SkyPilot's real ones.

A "bucket" is a local folder: `s3://bucket/path` is `<buckets>/bucket/path`. Launching a task runs
`on_run(output_dir)` (the stand-in for the worker on the node), which writes into the mounted bucket folder.
"""

from __future__ import annotations

import inspect
import shlex
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sky.jobs import ManagedJobStatus
from sky.schemas.api import responses
from sky.server.common import RequestId
from sky.utils import status_lib

import sky

REAL = {
    "jobs.launch": sky.jobs.launch,
    "jobs.tail_logs": sky.jobs.tail_logs,
    "jobs.queue_v2": sky.jobs.queue_v2,
    "jobs.cancel": sky.jobs.cancel,
    "launch": sky.launch,
    "tail_logs": sky.tail_logs,
    "down": sky.down,
    "status": sky.status,
    "get": sky.get,
    "stream_and_get": sky.stream_and_get,
    "catalog.list_accelerators": sky.catalog.list_accelerators,
}


@dataclass
class Scenario:
    """What the fake cloud does."""

    on_run: Callable[[Path], None] | None = None  # the worker: writes into the output folder
    exit_code: int = 0  # sky.exceptions.JobExitCode of the job (0 ok, 100 failed, 103 cancelled)
    final_status: str = "SUCCEEDED"  # the managed job's terminal status
    launch_error: BaseException | None = None  # raised by `get` of the launch request
    tail_error: BaseException | None = None  # raised while following logs (e.g. KeyboardInterrupt)
    job_duration_s: float = 1800.0
    recoveries: int = 0
    down_leaves_cluster: bool = False  # a broken teardown, to see that it is caught
    no_controller: bool = False  # no managed job was ever launched: the queue has no controller to ask
    accelerator_names: list[str] | None = None  # None: the catalog cannot be read (offline)
    offers: dict[tuple[str, int], list[tuple[str, str, str, float, float]]] | None = None
    # (name, count) -> [(cloud, instance type, region, price, spot price)]; None: catalog unreadable


class StandInSky:
    def __init__(self, buckets: Path, scenario: Scenario | None = None):
        self.buckets = buckets
        self.scenario = scenario or Scenario()
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.clusters: set[str] = set()
        self.jobs_table: dict[int, dict[str, Any]] = {}
        self._requests: dict[str, Any] = {}
        self._next_job = 1
        # SkyPilot's real pieces: parser, exceptions, store types, logging
        self.Task = sky.Task
        self.exceptions = sky.exceptions
        self.StoreType = sky.StoreType
        self.sky_logging = sky.sky_logging
        self.jobs = SimpleNamespace(
            launch=self._jobs_launch,
            tail_logs=self._jobs_tail_logs,
            queue_v2=self._jobs_queue_v2,
            cancel=self._jobs_cancel,
        )
        self.catalog = SimpleNamespace(
            list_accelerators=self._list_accelerators,
            common=SimpleNamespace(read_catalog=self._read_catalog),
        )
        self.cloud_stores = SimpleNamespace(get_storage_from_path=lambda url: _LocalBucketCli(self))

    # protocol -----------------------------------------------------------------------------------------
    def _bind(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind the client's exact call to the real function's signature: TypeError if it misuses the API."""
        bound = inspect.signature(REAL[name]).bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append((name, args, kwargs))
        return dict(bound.arguments)

    def _request(self, value: Any) -> RequestId[Any]:
        rid: RequestId[Any] = RequestId(str(uuid.uuid4()))
        self._requests[rid] = value
        return rid

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._resolve(self._bind("get", args, kwargs)["request_id"])

    def stream_and_get(self, *args: Any, **kwargs: Any) -> Any:
        request_id = self._bind("stream_and_get", args, kwargs)["request_id"]
        print(f"(stand-in) streaming the logs of request {request_id}")
        return self._resolve(request_id)

    def _resolve(self, request_id: Any) -> Any:
        if not isinstance(request_id, RequestId) or request_id not in self._requests:
            raise sky.exceptions.ClientError(
                f"request {request_id} not found (not a request id, or resolved twice)"
            )
        value = self._requests.pop(request_id)
        if isinstance(value, BaseException):
            raise value
        return value() if callable(value) else value

    def called(self, name: str) -> list[dict[str, Any]]:
        """The bound arguments of every call of `name`, in order."""
        return [dict(_bound(inspect.signature(REAL[n]).bind(*a, **k))) for n, a, k in self.calls if n == name]

    # launching ----------------------------------------------------------------------------------------
    def _run_task(self, task: sky.Task) -> None:
        """What happens on the node: the worker writes into the bucket folder mounted as its output."""
        if self.scenario.on_run is None:
            return
        output = None
        for dest, storage in task.storage_mounts.items():
            if dest == task.envs.get("LIFECYCLE_OUTPUT_DIR"):
                output = self.local_path(str(storage.source))
        assert output is not None, "the task mounts no bucket at LIFECYCLE_OUTPUT_DIR"
        output.mkdir(parents=True, exist_ok=True)
        self.scenario.on_run(output)

    def _jobs_launch(self, *args: Any, **kwargs: Any) -> RequestId[Any]:
        a = self._bind("jobs.launch", args, kwargs)
        task = a["task"]
        assert isinstance(task, sky.Task)
        if self.scenario.launch_error is not None:
            return self._request(self.scenario.launch_error)
        job_id = self._next_job
        self._next_job += 1
        self.jobs_table[job_id] = {"name": a["name"], "status": "PENDING", "task": task}

        def result() -> tuple[list[int], None]:
            self._run_task(task)
            self.jobs_table[job_id]["status"] = self.scenario.final_status
            return [job_id], None

        return self._request(result)

    def _jobs_tail_logs(self, *args: Any, **kwargs: Any) -> int | None:
        a = self._bind("jobs.tail_logs", args, kwargs)
        if self.scenario.tail_error is not None:
            raise self.scenario.tail_error
        print(f"(stand-in) logs of managed job {a['job_id']}: training ...")
        return self.scenario.exit_code if a["follow"] else None

    def _jobs_queue_v2(self, *args: Any, **kwargs: Any) -> RequestId[Any]:
        a = self._bind("jobs.queue_v2", args, kwargs)
        if self.scenario.no_controller:
            return self._request(sky.exceptions.ClusterNotUpError("No in-progress managed jobs."))
        records = [
            responses.ManagedJobRecord(
                job_id=jid,
                job_name=row["name"],
                task_id=0,
                task_name=row["name"],
                status=ManagedJobStatus(row["status"]),
                resources="1x[H100:1]",
                submitted_at=1_764_300_000.0,
                job_duration=self.scenario.job_duration_s,
                recovery_count=self.scenario.recoveries,
                failure_reason=None if row["status"] == "SUCCEEDED" else "exit code 1",
            )
            for jid, row in sorted(self.jobs_table.items())
            if (a["job_ids"] is None or jid in a["job_ids"])
            and not (a["skip_finished"] and row["status"] in ("SUCCEEDED", "CANCELLED", "FAILED"))
        ]
        return self._request((records, len(records), {}, len(self.jobs_table)))

    def _jobs_cancel(self, *args: Any, **kwargs: Any) -> RequestId[Any]:
        a = self._bind("jobs.cancel", args, kwargs)
        for jid in a["job_ids"] or []:
            self.jobs_table[jid]["status"] = "CANCELLED"
        return self._request(None)

    def launch(self, *args: Any, **kwargs: Any) -> RequestId[Any]:
        a = self._bind("launch", args, kwargs)
        assert a["cluster_name"] is not None
        self.clusters.add(a["cluster_name"])  # provisioning starts before the job can fail
        if self.scenario.launch_error is not None:
            return self._request(self.scenario.launch_error)

        def result() -> tuple[int, None]:
            self._run_task(a["task"])
            return 1, None

        return self._request(result)

    def tail_logs(self, *args: Any, **kwargs: Any) -> int:
        a = self._bind("tail_logs", args, kwargs)
        if self.scenario.tail_error is not None:
            raise self.scenario.tail_error
        print(f"(stand-in) logs of job {a['job_id']} on {a['cluster_name']}: training ...")
        return self.scenario.exit_code

    def down(self, *args: Any, **kwargs: Any) -> RequestId[Any]:
        name = self._bind("down", args, kwargs)["cluster_name"]
        if name not in self.clusters:
            return self._request(sky.exceptions.ClusterDoesNotExist(f"Cluster {name!r} does not exist."))
        if not self.scenario.down_leaves_cluster:
            self.clusters.discard(name)
        return self._request(None)

    def status(self, *args: Any, **kwargs: Any) -> RequestId[Any]:
        wanted = self._bind("status", args, kwargs)["cluster_names"]
        names = sorted(self.clusters if wanted is None else self.clusters & set(wanted))
        records = [
            responses.StatusResponse(
                name=n,
                launched_at=1_764_300_000,
                status=status_lib.ClusterStatus.UP,
                autostop=5,
                to_down=True,
                cluster_hash="0" * 8,
                cluster_ever_up=True,
                user_hash="u",
                user_name="me",
                workspace="default",
                is_managed=False,
                nodes=1,
            )
            for n in names
        ]
        return self._request(records)

    # catalog ------------------------------------------------------------------------------------------
    def _read_catalog(self, filename: str, pull_frequency_hours: int | None = None) -> Any:
        import pandas as pd
        import requests

        if self.scenario.accelerator_names is None:
            raise requests.exceptions.ConnectionError("Failed to resolve 'raw.githubusercontent.com'")
        return pd.DataFrame({"AcceleratorName": self.scenario.accelerator_names, "Clouds": "['AWS']"})

    def _list_accelerators(self, *args: Any, **kwargs: Any) -> dict[str, list[Any]]:
        import re

        import requests
        from sky.catalog.common import InstanceTypeInfo

        a = self._bind("catalog.list_accelerators", args, kwargs)
        if self.scenario.offers is None:
            raise requests.exceptions.ConnectionError("Failed to resolve 'raw.githubusercontent.com'")
        flags = 0 if a["case_sensitive"] else re.IGNORECASE
        found: dict[str, list[Any]] = {}
        for (acc, count), rows in self.scenario.offers.items():
            if a["name_filter"] and not re.search(a["name_filter"], acc, flags):
                continue
            if a["quantity_filter"] is not None and count != a["quantity_filter"]:
                continue
            for cloud, itype, region, price, spot in rows:
                if cloud != a["clouds"] or (
                    a["region_filter"] and not re.search(a["region_filter"], region, flags)
                ):
                    continue
                found.setdefault(acc, []).append(
                    InstanceTypeInfo(cloud, itype, acc, count, None, None, None, price, spot, region)
                )
        return found

    # buckets ------------------------------------------------------------------------------------------
    def local_path(self, uri: str) -> Path:
        scheme, _, rest = uri.partition("://")
        assert scheme and rest, uri
        return self.buckets / rest.rstrip("/")


@dataclass
class _LocalBucketCli:
    """The cloud CLI commands SkyPilot would run (`aws s3 sync ...`), as `cp` on the local bucket folders."""

    sky: StandInSky
    made: list[str] = field(default_factory=list)

    def make_sync_dir_command(self, source: str, destination: str) -> str:
        src = self.sky.local_path(source)
        return f"if [ -d {shlex.quote(str(src))} ]; then cp -a {shlex.quote(str(src))}/. {destination}; fi"

    def make_sync_file_command(self, source: str, destination: str) -> str:
        return f"cp {shlex.quote(str(self.sky.local_path(source)))} {destination}"


def _bound(bound: inspect.BoundArguments) -> dict[str, Any]:
    bound.apply_defaults()
    return dict(bound.arguments)


def stand_in_client(buckets: Path, scenario: Scenario | None = None) -> tuple[Any, StandInSky]:
    from lifecycle.launch.sky_client import SkyClient

    fake = StandInSky(buckets, scenario)
    return SkyClient(sdk=fake), fake


def write_fake_output(output: Path, *, adapter: bool = True) -> None:
    """What the worker leaves in LIFECYCLE_OUTPUT_DIR: a committed checkpoint, model, adapter, records."""
    from lifecycle import manifest
    from lifecycle.launch import checkpoints

    ckpt = output / "checkpoints" / "checkpoint-10"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "optimizer.pt").write_bytes(b"o" * 64)
    checkpoints.commit(ckpt)
    model = output / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    manifest.write(model)
    if adapter:
        (output / "adapter").mkdir(exist_ok=True)
        (output / "adapter" / "adapter_model.safetensors").write_bytes(b"a" * 128)
        manifest.write(output / "adapter")
    (output / "worker.json").write_text('{"steps": 10}')
    (output / "metrics.jsonl").write_text('{"step": 10, "loss": 0.5}\n')


def write_sky_recipe(
    folder: Path,
    launch: dict[str, Any] | None = None,
    *,
    base: str = "org/some-model",
    mix: list[dict[str, Any]] | None = None,
) -> Path:
    """A small valid recipe with `launch.kind: sky` and two tiny data files beside it (and `data.mix`
    sources, whose files the caller writes)."""
    from ruamel.yaml import YAML

    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    row = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "billing"}]}\n'
    (data / "train.jsonl").write_text(row * 4)
    (data / "eval.jsonl").write_text(row * 2)
    recipe = {
        "name": "sky-test",
        "model": {"base": base},
        "data": {
            "train": "data/train.jsonl",
            "eval": "data/eval.jsonl",
            "format": "messages",
            **({"mix": mix} if mix else {}),
        },
        "method": {"kind": "lora", "r": 8},
        "training": {"max_steps": 10},
        "launch": {
            "kind": "sky",
            "accelerators": "H100:1",
            "bucket": "s3://test-bucket/lifecycle",
            **(launch or {}),
        },
        "register": {"model_name": "sky-test"},
    }
    path = folder / "recipe.yaml"
    with path.open("w") as fh:
        YAML().dump(recipe, fh)
    return path


def write_mix_rows(path: Path, n: int = 3) -> Path:
    """A `data.mix` source of `prompt_completion` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f'{{"prompt": "q{i}", "completion": "a{i}"}}\n' for i in range(n)))
    return path
