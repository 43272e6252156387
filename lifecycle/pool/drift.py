"""Drift: every place where the registry's `production` aliases or the running pool disagree with the pool file.

The pool file is the desired state; aliases and the running servers follow it (`lifecycle apply`). Drift is what
happens between: an alias moved by hand, an apply that has not run since a merge, a replica that died, an adapter
unloaded. Finding it is an alarm (`lifecycle verify serving/pool.yaml --live` exits 1); it never changes
anything. Pure: the aliases and the running pool come in as data.
"""

from __future__ import annotations

from collections.abc import Mapping

from lifecycle.pool.aliases import PRODUCTION, pinned_versions
from lifecycle.pool.schema import Adapter, Deployment, Pool, RegisteredModel

# Deployment fields compared one by one below; any other field that differs is named generically
_COMPARED = ("name", "model", "replicas", "adapters")


def drift(file: Pool, aliases: Mapping[str, Mapping[str, str]], running: Pool | None) -> list[str]:
    """One line per disagreement, registry first (by model name), then the running pool (by deployment name);
    empty when everything agrees. `aliases`: registered model name -> alias -> version, for every model that
    has aliases. `running`: what the pool on this machine serves, None when no pool runs here (then only the
    registry is compared)."""
    return registry_drift(file, aliases) + ([] if running is None else running_drift(file, running))


def registry_drift(file: Pool, aliases: Mapping[str, Mapping[str, str]]) -> list[str]:
    """`production` must name the version the file pins, and no model the file does not pin may have one. A model
    pinned at several versions (a canary) has no single production version: its alias, when set, must name one
    of them (what `lifecycle apply` leaves it at, lifecycle.pool.aliases)."""
    pinned = pinned_versions(file)
    problems = []
    for model in sorted(pinned.keys() | {m for m, a in aliases.items() if PRODUCTION in a}):
        production = aliases.get(model, {}).get(PRODUCTION)
        versions = pinned.get(model)
        if versions is None:
            problems.append(
                f"{model}: production names v{production}, but the pool file pins no version of {model} "
                "(an alias set by hand, or left behind)"
            )
            continue
        where = ", ".join(f"v{v} ({', '.join(sorted(versions[v]))})" for v in sorted(versions))
        if production is None and len(versions) == 1:
            problems.append(
                f"{model}: the pool file pins {where}, but no version has the production alias "
                "(`lifecycle apply` has not run since it was pinned, or the alias was removed by hand)"
            )
        elif production is not None and int(production) not in versions:
            problems.append(
                f"{model}: the pool file pins {where}, but production names v{production} "
                "(moved by hand, or `lifecycle apply` has not run since the pool file changed)"
            )
    return problems


def running_drift(file: Pool, running: Pool) -> list[str]:
    """Deployments missing or extra, and for each one in both: the weights, the replica count, the adapters
    and any other setting that differs."""
    want = {d.name: d for d in file.deployments}
    have = {d.name: d for d in running.deployments}
    problems = []
    for name in sorted(want.keys() | have.keys()):
        if name not in have:
            problems.append(
                f"deployment {name!r}: in the pool file ({_weights(want[name])}), but not running"
            )
        elif name not in want:
            problems.append(
                f"deployment {name!r}: running ({_weights(have[name])}), but not in the pool file"
            )
        else:
            problems += _deployment(want[name], have[name])
    return problems


def _deployment(want: Deployment, have: Deployment) -> list[str]:
    label = f"deployment {want.name!r}"
    problems = []
    if want.model != have.model:
        problems.append(f"{label}: runs {_weights(have)}, but the pool file pins {_weights(want)}")
    if want.replicas != have.replicas:
        problems.append(
            f"{label}: runs {have.replicas} replica(s), but the pool file asks for {want.replicas}"
        )
    wanted = {a.name: a for a in want.adapters}
    loaded = {a.name: a for a in have.adapters}
    for name in sorted(wanted.keys() | loaded.keys()):
        if name not in loaded:
            problems.append(f"{label}: adapter {_adapter(wanted[name])} is pinned, but not loaded")
        elif name not in wanted:
            problems.append(f"{label}: adapter {_adapter(loaded[name])} is loaded, but not in the pool file")
        elif wanted[name] != loaded[name]:
            problems.append(
                f"{label}: adapter {_adapter(loaded[name])} is loaded, but the pool file pins "
                f"{_adapter(wanted[name])}"
            )
    for field in Deployment.model_fields:
        if field not in _COMPARED and getattr(want, field) != getattr(have, field):
            problems.append(
                f"{label}: runs with {field} {_value(getattr(have, field))}, but the pool file says "
                f"{_value(getattr(want, field))}"
            )
    return problems


def _weights(d: Deployment) -> str:
    m = d.model
    if isinstance(m, RegisteredModel):
        return f"{m.name} v{m.version}, weights {m.manifest_digest[:12]}"
    return f"base {m.source}, weights {m.manifest_digest[:12]}"


def _adapter(a: Adapter) -> str:
    return f"{a.name} ({a.model} v{a.version}, weights {a.manifest_digest[:12]})"


def _value(value: object) -> str:
    if hasattr(value, "model_dump"):
        return str(value.model_dump(mode="json", exclude_defaults=True))
    return repr(value)
