"""`lifecycle apply --on sky`: the pool as SkyServe services.

    plan_sky(current services, desired pool) -> [SkyCommand]     pure: which `sky serve` command per service
    apply_on_sky(pool, sky_dir, dry_run=...) -> [SkyResult]       writes the service files, runs the commands

What each change costs on SkyServe (it reuses replicas when only the `service` section changes, and starts new
ones when the task does):
  a new deployment -> `sky serve up`;
  weights, engine, adapters, GPUs, placement (the task changed) -> `sky serve update --mode blue_green`: traffic
      moves only once every new replica answers its readiness probe, so no client sees a mixed fleet;
  replicas or the probe only (the `service` section) -> `sky serve update` (rolling), replicas reused;
  a deployment removed -> `sky serve down`.
Order: capacity first (up, then updates), downs last; by service name within each.

The record of what each service runs is its file in `sky_dir`, written only after SkyServe accepted the command
for it: a failed command leaves that service's file (and every later one) as it was. A service SkyServe runs
that has no file there is looked up in `previous` (the pool before this change, when the caller has it); a
service that is in neither and is not in the pool is not this pool's, and is left alone.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ruamel.yaml import YAML

from lifecycle.errors import LaunchError
from lifecycle.pool.schema import Pool
from lifecycle.pool.sky import POOL_FILE, REPLICA_ENV, render_service, service_path

HEADER = "# SkyServe service of deployment"  # how a service file written here starts

Verb = Literal["up", "update", "down"]
Mode = Literal["rolling", "blue_green"]


@dataclass(frozen=True)
class SkyCommand:
    verb: Verb
    service: str
    mode: Mode | None = None  # update only
    reason: str = ""

    def argv(self, sky_dir: str) -> list[str]:
        """The same command as SkyPilot's CLI would take it."""
        file = service_path(self.service, sky_dir)
        if self.verb == "up":
            return ["sky", "serve", "up", file, "--service-name", self.service]
        if self.verb == "update":
            return ["sky", "serve", "update", self.service, file, "--mode", self.mode or "rolling"]
        return ["sky", "serve", "down", self.service]

    def describe(self, sky_dir: str = "sky/serve") -> str:
        return f"{shlex.join(self.argv(sky_dir))}  ({self.reason})"


@dataclass(frozen=True)
class SkyResult:
    command: SkyCommand
    status: Literal["planned", "done"]
    endpoint: str | None = None  # `up` only: where the service answers


class SkyServe(Protocol):
    """What applying needs from SkyPilot (lifecycle.launch.sky_client.SkyClient)."""

    def services(self) -> dict[str, str]: ...
    def serve_up(
        self, service_yaml: Path, service_name: str, *, workdir: Path, secrets: Mapping[str, str]
    ) -> str: ...
    def serve_update(
        self, service_yaml: Path, service_name: str, *, mode: Mode, workdir: Path, secrets: Mapping[str, str]
    ) -> None: ...
    def serve_down(self, service_name: str) -> None: ...


# ------------------------------------------------------------------------------------------------ the plan


def plan_sky(
    current_services: Mapping[str, str | None], desired: Pool, *, pool_file: str = POOL_FILE
) -> list[SkyCommand]:
    """The `sky serve` commands that turn the services SkyServe runs into the pool `desired`.

    `current_services` maps each service of this pool that SkyServe runs to the service file it was last given
    (None: running, but what it runs is not on record; it is replaced blue-green, which is right whatever it
    runs). A service whose file would not change gets no command."""
    ups: list[SkyCommand] = []
    blue_green: list[SkyCommand] = []
    rolling: list[SkyCommand] = []
    for deployment in sorted(desired.deployments, key=lambda d: d.name):
        name = deployment.name
        text = render_service(deployment, pool_file=pool_file)
        if name not in current_services:
            ups.append(SkyCommand("up", name, reason="a new deployment"))
            continue
        before = current_services[name]
        if before is None:
            blue_green.append(
                SkyCommand("update", name, "blue_green", "what the service runs is not on record: replaced")
            )
            continue
        changed = _changed_keys(_parse(before), _parse(text))
        if not changed:
            continue  # the same task and service (at most a comment differs)
        if all(key.startswith("service.") for key in changed):
            rolling.append(
                SkyCommand("update", name, "rolling", f"{', '.join(changed)} changed; replicas kept")
            )
        else:
            blue_green.append(SkyCommand("update", name, "blue_green", _replica_reason(changed)))
    downs = [
        SkyCommand("down", name, reason="no longer in the pool")
        for name in sorted(current_services.keys() - {d.name for d in desired.deployments})
    ]
    return [*ups, *blue_green, *rolling, *downs]


def current_services(
    running: Iterable[str],
    desired: Pool,
    records: Mapping[str, str],
    previous: Pool | None = None,
    *,
    pool_file: str = POOL_FILE,
) -> dict[str, str | None]:
    """This pool's services among those SkyServe runs, each with the service file it was last given: from
    `records` (service name -> file text written by an earlier apply), else rendered from `previous`, else None.
    A running service in none of them and not in `desired` is not this pool's: it is left out."""
    found: dict[str, str | None] = {}
    for name in sorted(set(running)):
        if name in records:
            found[name] = records[name]
        elif previous is not None and (before := previous.deployment(name)) is not None:
            found[name] = render_service(before, pool_file=pool_file)
        elif desired.deployment(name) is not None:
            found[name] = None
    return found


def _parse(text: str) -> dict[str, Any]:
    data = YAML(typ="safe").load(text)
    return data if isinstance(data, dict) else {}


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Top-level keys that differ; inside `service`, its own keys (service.replicas, ...)."""
    changed = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key):
            continue
        if key == "service" and isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            inner_old, inner_new = old[key], new[key]
            changed += [
                f"service.{k}"
                for k in sorted(inner_old.keys() | inner_new.keys())
                if inner_old.get(k) != inner_new.get(k)
            ]
        else:
            changed.append(key)
    return changed


def _replica_reason(changed: list[str]) -> str:
    what = [key for key in changed if not key.startswith("service.")]
    if "envs" in what:
        what[what.index("envs")] = f"the replica ({REPLICA_ENV}: weights, engine, adapters or GPUs)"
    return f"{', '.join(what)} changed; new replicas take traffic once all are ready"


# ------------------------------------------------------------------------------------------------ applying


def apply_on_sky(
    pool: Pool,
    sky_dir: Path,
    *,
    dry_run: bool,
    workdir: Path,
    secrets: Mapping[str, str],
    backend: SkyServe | None = None,
    previous: Pool | None = None,
    pool_file: str = POOL_FILE,
) -> list[SkyResult]:
    """Bring SkyServe to `pool`: plan against the services it runs, then run each command with the service file
    staged outside `sky_dir`, and write that file into `sky_dir` only once SkyServe took it (a down removes it).
    `workdir` (the repository root, holding `pool_file`) is what each replica gets; `secrets` (the MLflow URI)
    are handed to SkyServe, never written. Dry run: the plan, nothing written or run. A failing command raises
    the launcher's error (NoCloudError without a cloud: "run `sky check`"); the commands before it stay done
    and recorded, and the message names them."""
    if backend is None:
        from lifecycle.launch.sky_client import SkyClient

        backend = SkyClient()
    records = read_records(sky_dir)
    running = backend.services()
    current = current_services(running, pool, records, previous, pool_file=pool_file)
    commands = plan_sky(current, pool, pool_file=pool_file)
    if dry_run:
        return [SkyResult(command, "planned") for command in commands]
    texts = {d.name: render_service(d, pool_file=pool_file) for d in pool.deployments}
    results: list[SkyResult] = []
    with tempfile.TemporaryDirectory(prefix="lifecycle-sky-serve-") as staging:
        for command in commands:
            staged = Path(staging) / f"{command.service}.yaml"
            if command.verb != "down":
                staged.write_text(texts[command.service])
            try:
                endpoint = _run(backend, command, staged, workdir, secrets)
            except LaunchError as exc:
                if results:
                    done = "; ".join(shlex.join(r.command.argv(str(sky_dir))) for r in results)
                    raise type(exc)(f"{exc} (already done and recorded in {sky_dir}: {done})") from None
                raise
            _record(sky_dir, command.service, texts.get(command.service))
            results.append(SkyResult(command, "done", endpoint))
    # Every service now runs its file: record the ones that needed no command too (a comment may differ), and
    # drop records of services that are neither desired nor running.
    for name, text in texts.items():
        if records.get(name) != text and name in running:
            _record(sky_dir, name, text)
    for name in records.keys() - texts.keys() - set(running):
        _record(sky_dir, name, None)
    return results


def read_records(sky_dir: Path) -> dict[str, str]:
    """Service name -> the file an earlier apply wrote (files there that this code did not write are ignored)."""
    if not sky_dir.is_dir():
        return {}
    records = {}
    for path in sorted(sky_dir.glob("*.yaml")):
        text = path.read_text()
        if text.startswith(HEADER):
            records[path.stem] = text
    return records


def _run(
    backend: SkyServe, command: SkyCommand, staged: Path, workdir: Path, secrets: Mapping[str, str]
) -> str | None:
    if command.verb == "up":
        return backend.serve_up(staged, command.service, workdir=workdir, secrets=secrets)
    if command.verb == "update":
        backend.serve_update(
            staged, command.service, mode=command.mode or "rolling", workdir=workdir, secrets=secrets
        )
        return None
    backend.serve_down(command.service)
    return None


def _record(sky_dir: Path, name: str, text: str | None) -> None:
    """Write (atomically: a reader sees the old file or the new one) or remove one service file."""
    path = sky_dir / f"{name}.yaml"
    if text is None:
        path.unlink(missing_ok=True)
        return
    sky_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
