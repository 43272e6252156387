"""The reconcile step as a pure function: from the pool that runs to the pool the file asks for, the ordered
actions that get there. No I/O; `apply` plays actions on a pool so the tests can check that the plan arrives.

What each change of a deployment costs:
  model, engine, residency, region, GPUs per replica -> replace, blue-green: start the new servers (with the
      desired replicas and adapters), smoke-check them, shift traffic, stop the old ones
  replicas -> scale; adapters -> hot-load (also in place, for a new version of the same name) or unload;
  price -> a record change only, no server is touched.
Order: capacity is added before any is taken away (start, replace, scale up, load adapters, records, unload
adapters, scale down, stop); within a step by deployment name, then adapter name, so a plan reads the same
every time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lifecycle.pool.schema import Adapter, Deployment, Pool

REPLACE_FIELDS = ("model", "engine", "residency", "region", "gpus_per_replica")
SCALE_FIELDS = ("replicas",)
ADAPTER_FIELDS = ("adapters",)
RECORD_FIELDS = ("price_per_gpu_hour",)
KEY_FIELDS = ("name",)

REPLACE_PHASES = ("start the new servers", "smoke-check them", "shift traffic", "stop the old servers")


@dataclass(frozen=True)
class Start:
    deployment: Deployment

    def describe(self) -> str:
        d = self.deployment
        return f"start {d.name}: {_weights(d)}, {_count(d.replicas, 'replica')}{_with_adapters(d.adapters)}"


@dataclass(frozen=True)
class Stop:
    deployment: Deployment

    def describe(self) -> str:
        d = self.deployment
        return f"stop {d.name}: {_weights(d)}, {_count(d.replicas, 'replica')}"


@dataclass(frozen=True)
class Replace:
    old: Deployment
    new: Deployment
    changed: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"replace {self.new.name} blue-green ({', '.join(self.changed)} changed): {_weights(self.old)} -> "
            f"{_weights(self.new)}, {_count(self.new.replicas, 'replica')}{_with_adapters(self.new.adapters)}; "
            + ", then ".join(REPLACE_PHASES)
        )


@dataclass(frozen=True)
class Scale:
    name: str
    old: int
    new: int

    def describe(self) -> str:
        return f"scale {self.name}: {self.old} -> {_count(self.new, 'replica')}"


@dataclass(frozen=True)
class LoadAdapter:
    deployment: str
    adapter: Adapter
    replaces: Adapter | None = None  # the same name at another version: loaded in place

    def describe(self) -> str:
        a = self.adapter
        was = f" in place of v{self.replaces.version}" if self.replaces is not None else ""
        return (
            f"hot-load adapter {a.name} ({a.model} v{a.version}){was} on every replica of {self.deployment}"
        )


@dataclass(frozen=True)
class UnloadAdapter:
    deployment: str
    adapter: Adapter

    def describe(self) -> str:
        a = self.adapter
        return f"unload adapter {a.name} ({a.model} v{a.version}) from {self.deployment}"


@dataclass(frozen=True)
class Update:
    name: str
    values: tuple[tuple[str, object], ...]  # (field, new value), records only: no server is touched

    def describe(self) -> str:
        return f"record for {self.name}: " + ", ".join(f"{k} = {v}" for k, v in self.values)


Action = Start | Stop | Replace | Scale | LoadAdapter | UnloadAdapter | Update


def diff(current: Pool, desired: Pool) -> tuple[Action, ...]:
    """The ordered actions that turn `current` into `desired`; empty when they already agree."""
    now, want = _by_name(current), _by_name(desired)
    starts: list[Action] = [Start(want[n]) for n in sorted(want.keys() - now.keys())]
    stops: list[Action] = [Stop(now[n]) for n in sorted(now.keys() - want.keys())]
    replaces: list[Action] = []
    ups: list[Action] = []
    downs: list[Action] = []
    loads: list[Action] = []
    unloads: list[Action] = []
    records: list[Action] = []
    for name in sorted(now.keys() & want.keys()):
        old, new = now[name], want[name]
        changed = _changed(old, new)
        if any(field in REPLACE_FIELDS for field in changed):
            replaces.append(Replace(old, new, tuple(f for f in REPLACE_FIELDS if f in changed)))
            continue
        if "replicas" in changed:
            (ups if new.replicas > old.replicas else downs).append(Scale(name, old.replicas, new.replicas))
        if "adapters" in changed:
            had = {a.name: a for a in old.adapters}
            wanted = {a.name: a for a in new.adapters}
            for key in sorted(wanted):
                if had.get(key) != wanted[key]:
                    loads.append(LoadAdapter(name, wanted[key], had.get(key)))
            unloads += [UnloadAdapter(name, had[key]) for key in sorted(had.keys() - wanted.keys())]
        values = tuple((f, getattr(new, f)) for f in RECORD_FIELDS if f in changed)
        if values:
            records.append(Update(name, values))
    return (*starts, *replaces, *ups, *loads, *records, *unloads, *downs, *stops)


def apply(current: Pool, actions: Iterable[Action]) -> Pool:
    """The pool after `actions` (what a reconciler that carried them all out would be running)."""
    state = _by_name(current)
    for action in actions:
        if isinstance(action, Start):
            state[action.deployment.name] = action.deployment
        elif isinstance(action, Stop):
            del state[action.deployment.name]
        elif isinstance(action, Replace):
            state[action.new.name] = action.new
        elif isinstance(action, Scale):
            state[action.name] = state[action.name].model_copy(update={"replicas": action.new})
        elif isinstance(action, LoadAdapter):
            d = state[action.deployment]
            kept = [a for a in d.adapters if a.name != action.adapter.name]
            state[d.name] = d.model_copy(update={"adapters": [*kept, action.adapter]})
        elif isinstance(action, UnloadAdapter):
            d = state[action.deployment]
            kept = [a for a in d.adapters if a.name != action.adapter.name]
            state[d.name] = d.model_copy(update={"adapters": kept})
        else:
            state[action.name] = state[action.name].model_copy(update=dict(action.values))
    return Pool(deployments=list(state.values()))


def same_state(a: Pool, b: Pool) -> bool:
    """Whether two pools serve the same thing (the order of deployments and of adapters does not matter)."""
    return _normalized(a) == _normalized(b)


def _by_name(pool: Pool) -> dict[str, Deployment]:
    return {d.name: d for d in pool.deployments}


def _normalized(pool: Pool) -> dict[str, Deployment]:
    return {
        d.name: d.model_copy(update={"adapters": sorted(d.adapters, key=lambda a: a.name)})
        for d in pool.deployments
    }


def _changed(old: Deployment, new: Deployment) -> set[str]:
    changed = {field for field in Deployment.model_fields if getattr(old, field) != getattr(new, field)}
    if "adapters" in changed and sorted(old.adapters, key=_name) == sorted(new.adapters, key=_name):
        changed.discard("adapters")  # the same adapters listed in another order
    return changed


def _name(adapter: Adapter) -> str:
    return adapter.name


def _weights(d: Deployment) -> str:
    m = d.model
    if m.kind == "base":
        return f"base {m.source} ({m.manifest_digest[:12]}…)"
    return f"{m.name} v{m.version} ({m.quantization.scheme})"


def _with_adapters(adapters: list[Adapter]) -> str:
    if not adapters:
        return ""
    return " with adapters " + ", ".join(f"{a.name} ({a.model} v{a.version})" for a in adapters)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def describe(actions: Iterable[Action]) -> list[str]:
    """One line per action, numbered; a single line saying so when there is nothing to do."""
    lines = [f"{i}. {action.describe()}" for i, action in enumerate(actions, 1)]
    return lines or ["nothing to do: the pool already serves this"]
