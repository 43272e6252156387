"""The pool runner: plays the reconcile plan (lifecycle.pool.diff) on real servers, and keeps them alive.

Each action is carried out so that the front never points at a server that is not checked:
- start / scale up: launch the replicas, smoke-check every served name on each (a real completion, not /health
  alone), then route to them;
- replace (base or quantization change, blue-green): start and check the new replicas, swap the routes in one
  step, drain the old ones (wait for their requests in flight), stop them;
- adapters: fetch and verify, hot-load on every replica (in place for a new version under the same name), check
  each, then route; the replica's start-up spec gains the adapter so a restarted replica has it too. A deployment
  started without LoRA gets its adapters by a blue-green replace;
- stop / scale down / unload: take it out of the routes, drain, then stop or unload.
A failing action undoes its own part; `reconcile` then plays the plan back to what ran before, so a failed apply
leaves the pool serving what it served before (RolloutFailed). A supervisor pass restarts dead replicas with the
spec they last ran, and reports each restart.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lifecycle.engines.client import OpenAIClient
from lifecycle.engines.vllm import VllmSpec
from lifecycle.errors import LifecycleError, RolloutFailed, ServeError
from lifecycle.pool import diff as pool_diff
from lifecycle.pool.engine import lora_capable, replica_spec
from lifecycle.pool.schema import Deployment, Pool
from lifecycle.serve.artifacts import Artifacts
from lifecycle.serve.front import Backend

SMOKE_PROMPTS = ("The capital of France is", "def add(a, b):")
SMOKE_TOKENS = 4
EVENTS_KEPT = 50


class Server(Protocol):
    """A started model server (lifecycle.engines.vllm_server.VllmServer, or the fake engine in tests)."""

    @property
    def root_url(self) -> str: ...
    @property
    def client(self) -> OpenAIClient: ...
    def running(self) -> bool: ...
    def load_lora(self, name: str, path: Path, *, inplace: bool = False) -> None: ...
    def unload_lora(self, name: str) -> None: ...
    def stop(self) -> None: ...


class Endpoint(Protocol):
    """What clients reach the pool through: the plain front (lifecycle.serve.front.Front), or the router
    (lifecycle.route.server.Router) when a routing policy decides who may reach what."""

    @property
    def url(self) -> str: ...
    @property
    def routes(self) -> Mapping[str, Sequence[object]]: ...  # served name -> its live replicas
    def set_routes(self, routes: Mapping[str, Sequence[Backend]], *, pool: Pool | None = None) -> None: ...
    def drain(
        self, backends: Iterable[Backend], timeout_s: float = 120.0, *, model: str | None = None
    ) -> bool: ...
    def stop(self) -> None: ...


Launch = Callable[[VllmSpec, Path], Server]  # start a server for the spec, logs in the folder; return when up


@dataclass
class Replica:
    deployment: str
    index: int
    spec: VllmSpec
    server: Server
    started_at: float = field(default_factory=time.time)
    restarts: int = 0
    alive: bool = True

    @property
    def backend(self) -> Backend:
        return Backend(url=self.server.root_url, deployment=self.deployment, replica=self.name)

    @property
    def name(self) -> str:
        return f"{self.deployment}/{self.index}"


@dataclass(frozen=True)
class Reconciled:
    before: Pool
    after: Pool
    actions: tuple[str, ...]
    seconds: float
    timings: tuple[tuple[str, float], ...]  # (action, seconds) for each action played


class PoolRunner:
    """Owns the replicas of one pool on this machine and the routes the front serves."""

    def __init__(
        self,
        launch: Launch,
        artifacts: Artifacts,
        workdir: Path,
        front: Endpoint,
        *,
        say: Callable[[str], None] = lambda line: None,
        smoke_prompts: Sequence[str] = SMOKE_PROMPTS,
    ) -> None:
        self.launch = launch
        self.artifacts = artifacts
        self.workdir = Path(workdir)
        self.front = front
        self.say = say
        self.smoke_prompts = tuple(smoke_prompts)
        self.pool = Pool()
        self.replicas: dict[str, list[Replica]] = {}
        self.events: list[str] = []
        self.lock = threading.RLock()  # one change at a time: an apply, a supervisor pass, a stop

    # ---- the plan

    def reconcile(self, desired: Pool) -> Reconciled:
        """Bring the running pool to `desired`; on a failure, back to what ran before (RolloutFailed)."""
        with self.lock:
            started = time.monotonic()
            before = self.pool
            actions = pool_diff.diff(before, desired)
            timings: list[tuple[str, float]] = []
            for step in _steps(actions):
                for action in step:
                    self.say(action.describe())
                began = time.monotonic()
                try:
                    if len(step) > 1:  # only starts are grouped
                        self._start_all([a for a in step if isinstance(a, pool_diff.Start)])
                    else:
                        self._play(step[0])
                except LifecycleError as exc:
                    reverted = self._revert(before)
                    raise RolloutFailed(
                        f"{'; '.join(a.describe() for a in step)}: {exc}. "
                        + (
                            "Reverted: the pool serves what it served before."
                            if reverted is None
                            else f"Reverting failed too ({reverted}); `lifecycle serve --status` shows what runs."
                        )
                    ) from None
                seconds = time.monotonic() - began
                timings += [(action.describe(), seconds) for action in step]
            return Reconciled(
                before=before,
                after=self.pool,
                actions=tuple(a.describe() for a in actions),
                seconds=time.monotonic() - started,
                timings=tuple(timings),
            )

    def _revert(self, before: Pool) -> str | None:
        """Play the way back to `before`; None when it got there, else why not."""
        try:
            for action in pool_diff.diff(self.pool, before):
                self.say(f"reverting: {action.describe()}")
                self._play(action)
        except LifecycleError as exc:
            return str(exc).splitlines()[0]
        return None

    def _play(self, action: pool_diff.Action) -> None:
        after = pool_diff.apply(self.pool, [action])
        if isinstance(action, pool_diff.Start):
            self.replicas[action.deployment.name] = self._start(action.deployment, action.deployment.replicas)
        elif isinstance(action, pool_diff.Replace):
            self._replace(action.new, after)
        elif isinstance(action, pool_diff.Scale):
            self._scale(after.deployment(action.name) or _missing(action.name), action.old, action.new, after)
        elif isinstance(action, pool_diff.LoadAdapter):
            self._load(action, after)
        elif isinstance(action, pool_diff.UnloadAdapter):
            self._unload(action, after)
        elif isinstance(action, pool_diff.Stop):
            self._retire(self.replicas.pop(action.deployment.name, []), after)
        self.pool = after
        self._publish(after)

    # ---- actions

    def _start(self, deployment: Deployment, count: int, first: int = 0) -> list[Replica]:
        """`count` checked replicas of `deployment`, started side by side; none left running if one fails."""
        model_dir = self.artifacts.model_dir(deployment)
        spec = replica_spec(deployment, model_dir, self.artifacts.adapter_dirs(deployment))
        jobs = [
            functools.partial(self._start_replica, deployment, spec, index)
            for index in range(first, first + count)
        ]
        return [replica for replicas in _all_or_none(jobs) for replica in replicas]

    def _start_replica(self, deployment: Deployment, spec: VllmSpec, index: int) -> list[Replica]:
        replica = Replica(deployment.name, index, spec, self._launch(spec, deployment.name, index))
        try:
            for name in deployment.served_names:
                self._smoke(replica, name)
        except BaseException:
            replica.server.stop()
            raise
        return [replica]

    def _start_all(self, starts: Sequence[pool_diff.Start]) -> None:
        """Several deployments started side by side (a pool's first start): all routed, or none left running."""
        jobs = [functools.partial(self._start, s.deployment, s.deployment.replicas) for s in starts]
        for start, replicas in zip(starts, _all_or_none(jobs), strict=True):
            self.replicas[start.deployment.name] = replicas
        self.pool = pool_diff.apply(self.pool, list(starts))
        self._publish(self.pool)

    def _launch(self, spec: VllmSpec, deployment: str, index: int) -> Server:
        try:
            return self.launch(spec, self.workdir / deployment / str(index))
        except LifecycleError as exc:
            raise ServeError(f"replica {deployment}/{index} did not start: {exc}") from None

    def _replace(self, new: Deployment, after: Pool) -> None:
        fresh = self._start(new, new.replicas)
        old = self.replicas.get(new.name, [])
        self.replicas[new.name] = fresh
        self._publish(after)  # one swap: every request from now on goes to the new replicas
        self._retire(old, None)

    def _scale(self, deployment: Deployment, old: int, new: int, after: Pool) -> None:
        replicas = self.replicas[deployment.name]
        if new > old:
            replicas += self._start(
                deployment, new - old, first=max((r.index for r in replicas), default=-1) + 1
            )
        else:
            self.replicas[deployment.name] = replicas[:new]
            self._retire(replicas[new:], after)

    def _load(self, action: pool_diff.LoadAdapter, after: Pool) -> None:
        deployment = after.deployment(action.deployment) or _missing(action.deployment)
        replicas = self.replicas[action.deployment]
        if not all(r.spec.lora_enabled for r in replicas) or not lora_capable(deployment):
            self._replace(deployment, after)  # started without LoRA: the adapter needs new servers
            return
        adapter = action.adapter
        path = self.artifacts.adapter_dir(action.deployment, adapter)
        previous = replicas[0].spec.lora_modules.get(adapter.name) if action.replaces else None
        done: list[Replica] = []
        try:
            for replica in replicas:
                replica.server.load_lora(adapter.name, path, inplace=previous is not None)
                done.append(replica)
                self._smoke(replica, adapter.name)
        except LifecycleError:
            for replica in done:  # undo on the replicas that took it
                try:
                    if previous is not None:
                        replica.server.load_lora(adapter.name, previous, inplace=True)
                    else:
                        replica.server.unload_lora(adapter.name)
                except LifecycleError as exc:
                    self._event(f"{replica.name}: could not undo adapter {adapter.name}: {exc}")
            raise
        for replica in replicas:
            replica.spec = dataclasses.replace(
                replica.spec, lora_modules={**replica.spec.lora_modules, adapter.name: path}
            )

    def _unload(self, action: pool_diff.UnloadAdapter, after: Pool) -> None:
        replicas = self.replicas[action.deployment]
        name = action.adapter.name
        self._publish(after)  # no new requests for it; then wait for those in flight
        self.front.drain([r.backend for r in replicas], model=name)
        for replica in replicas:
            replica.server.unload_lora(name)
            replica.spec = dataclasses.replace(
                replica.spec, lora_modules={k: v for k, v in replica.spec.lora_modules.items() if k != name}
            )

    def _retire(self, replicas: list[Replica], after: Pool | None) -> None:
        """Out of the routes, drained, stopped."""
        if after is not None:
            self._publish(after)
        if not self.front.drain([r.backend for r in replicas if r.alive]):
            self._event(
                f"{', '.join(r.name for r in replicas)}: requests still in flight after the drain timeout"
            )
        for replica in replicas:
            replica.server.stop()

    def _smoke(self, replica: Replica, name: str) -> None:
        """A short smoke check: each prompt completes under `name` with at least one token."""
        try:
            answers = replica.server.client.complete(
                list(self.smoke_prompts), model=name, max_tokens=SMOKE_TOKENS, ignore_eos=True, timeout_s=120
            )
        except LifecycleError as exc:
            raise ServeError(f"{replica.name} failed its smoke check for {name!r}: {exc}") from None
        empty = [p for p, a in zip(self.smoke_prompts, answers, strict=False) if not (a.token_ids or a.text)]
        if len(answers) != len(self.smoke_prompts) or empty:
            raise ServeError(f"{replica.name} failed its smoke check for {name!r}: no tokens for {empty}")

    # ---- routes, supervision, status

    def _publish(self, pool: Pool) -> None:
        routes: dict[str, list[Backend]] = {}
        for deployment in pool.deployments:
            live = [r.backend for r in self.replicas.get(deployment.name, []) if r.alive]
            for name in deployment.served_names:
                routes[name] = live
        self.front.set_routes(routes, pool=pool)

    def supervise(self) -> list[str]:
        """One pass: restart each dead replica with the spec it last ran; what happened, a line each. Skipped
        while a change holds the pool (the change checks its own replicas)."""
        if not self.lock.acquire(blocking=False):
            return []
        try:
            lines: list[str] = []
            for replicas in self.replicas.values():
                for replica in replicas:
                    if replica.server.running():
                        continue
                    if replica.alive:
                        replica.alive = False
                        self._publish(self.pool)
                        lines.append(self._event(f"{replica.name} died; restarting it"))
                    lines.append(self._restart(replica))
            return lines
        finally:
            self.lock.release()

    def _restart(self, replica: Replica) -> str:
        deployment = self.pool.deployment(replica.deployment) or _missing(replica.deployment)
        try:
            replica.server.stop()
            replica.server = self._launch(replica.spec, replica.deployment, replica.index)
            for name in deployment.served_names:
                self._smoke(replica, name)
        except LifecycleError as exc:
            return self._event(f"{replica.name} did not come back ({exc}); trying again")
        replica.alive, replica.restarts, replica.started_at = True, replica.restarts + 1, time.time()
        self._publish(self.pool)
        return self._event(f"{replica.name} restarted (restart {replica.restarts})")

    def _event(self, line: str) -> str:
        stamped = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}"
        self.events = [*self.events, stamped][-EVENTS_KEPT:]
        self.say(line)
        return line

    def stop(self) -> None:
        """Stop every replica (Ctrl-C, SIGTERM, the end of `lifecycle serve`)."""
        with self.lock:
            self.front.set_routes({})
            for replicas in self.replicas.values():
                for replica in replicas:
                    replica.server.stop()
            self.replicas = {}
            self.pool = Pool()


def _steps(actions: Sequence[pool_diff.Action]) -> list[list[pool_diff.Action]]:
    """The plan in steps: consecutive starts of new deployments form one step (they start side by side); every
    other action is a step of its own, in the plan's order."""
    steps: list[list[pool_diff.Action]] = []
    for action in actions:
        if (
            isinstance(action, pool_diff.Start)
            and steps
            and all(isinstance(a, pool_diff.Start) for a in steps[-1])
        ):
            steps[-1].append(action)
        else:
            steps.append([action])
    return steps


def _all_or_none(jobs: Sequence[Callable[[], list[Replica]]]) -> list[list[Replica]]:
    """Run the jobs side by side, each starting replicas; every job's replicas, in order, or (when one fails) its
    error, with the replicas the others started stopped again."""
    if len(jobs) == 1:
        return [jobs[0]()]
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="replica-start") as workers:
        futures = [workers.submit(job) for job in jobs]
    failures = [f.exception() for f in futures if f.exception() is not None]
    if failures:
        for future in futures:
            if future.exception() is None:
                for replica in future.result():
                    replica.server.stop()
        raise failures[0]  # type: ignore[misc]
    return [future.result() for future in futures]


def _missing(name: str) -> Deployment:
    raise ServeError(f"deployment {name!r} is not running")
