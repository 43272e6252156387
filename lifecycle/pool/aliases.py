"""MLflow aliases are outputs of the pool file, never inputs: once `lifecycle apply` has made the running pool
what a merged pool file says, each registered model whose pinned version changed gets `previous` (the version
that served before) and `production` (the version that serves now), and the new production version is tagged
with the commit and pull request that deployed it.

`alias_plan` is the pure decision, from the pool before the merge and after it. `move_aliases` carries it out as
a compare-and-set: MLflow cannot set two aliases in one transaction, nor set one only if it still has a value, so
each model's `production` is read first and must be what the old pool file pinned (or already the new version:
the apply is running again). Anything else means someone moved it by hand; that is drift, and the apply stops
rather than overwrite it. The aliases are re-read after they are set.

A model pinned at several versions at once (a canary deployment beside the main one) has no single production
version: `production` stays where it is when that is one of the pinned versions, and is removed otherwise
(`previous` := it), so that it never names a version nothing serves; the plan says why. Once the pool pins one
version again, that one becomes production. `lifecycle verify --live` (lifecycle.pool.drift) checks the same
rules.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from lifecycle.errors import AliasConflict
from lifecycle.pool.schema import Pool, RegisteredModel

PRODUCTION = "production"
PREVIOUS = "previous"
DEPLOYED_COMMIT = "lifecycle.deployed.commit"
DEPLOYED_PR = "lifecycle.deployed.pr"
DEPLOYED_AT = "lifecycle.deployed.at"


@dataclass(frozen=True)
class AliasMove:
    """One registered model's aliases after an apply.

    `before`: the versions the old pool pinned (sorted; empty when it did not pin the model). `after`: those the
    new pool pins. `production`: the version `production` must name afterwards; None when the model is no longer
    pinned (the alias is removed), and when `hold` is set. `hold`: why no version becomes production (the model
    is pinned at several versions: production is kept if it names one of them, else removed), else None.
    """

    model: str
    before: tuple[int, ...]
    after: tuple[int, ...]
    production: int | None
    hold: str | None = None

    @property
    def expected(self) -> frozenset[int | None]:
        """What `production` may name before the move: the version pinned before; unset when the model was not
        pinned; with several pinned before (held then), any of them or unset."""
        if not self.before:
            return frozenset({None})
        if len(self.before) == 1:
            return frozenset(self.before)
        return frozenset({None, *self.before})

    @property
    def previous(self) -> int | None:
        """The version `previous` will name, when the pool alone decides it (one version pinned before)."""
        if len(self.before) == 1 and self.target(self.before[0]) != self.before[0]:
            return self.before[0]
        return None

    def accepts(self, found: int | None) -> bool:
        """Whether `production` naming `found` now is what this move may start from (or has already made)."""
        if found in self.expected:
            return True
        if self.hold is not None:  # already made: removed, because no expected version is still pinned
            return found is None and not (self.expected & set(self.after))
        return found == self.production

    def target(self, found: int | None) -> int | None:
        """What `production` names after the move, given what it names now."""
        if self.hold is not None:
            return found if found in self.after else None
        return self.production

    def describe(self) -> str:
        if self.hold is not None:
            return f"{self.model}: no single production version: {self.hold}"
        if self.production is None:
            return f"{self.model}: no longer pinned: remove production (v{_versions(self.before)}), previous := it"
        was = _versions(self.before)
        previous = f"previous := v{was}, " if was else ""
        return f"{self.model}: {previous}production := v{self.production}"


def alias_plan(before: Pool, after: Pool) -> list[AliasMove]:
    """For every registered model whose pinned versions differ between the two pools, what its aliases become;
    sorted by model name. Base weights (not registered) have no aliases."""
    was, now = pinned_versions(before), pinned_versions(after)
    moves = []
    for model in sorted(was.keys() | now.keys()):
        old = tuple(sorted(was.get(model, {})))
        new = tuple(sorted(now.get(model, {})))
        if old == new:
            continue
        if len(new) > 1:
            where = ", ".join(f"v{v} ({', '.join(sorted(now[model][v]))})" for v in new)
            hold = (
                f"pinned at {len(new)} versions at once ({where}); production stays where it is if that is one "
                "of them, else it is removed, until the pool pins one"
            )
            moves.append(AliasMove(model, old, new, None, hold))
        else:
            moves.append(AliasMove(model, old, new, new[0] if new else None))
    return moves


def pinned_versions(pool: Pool) -> dict[str, dict[int, set[str]]]:
    """registered model name -> version -> the deployments pinning it (as model or as adapter)."""
    found: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for d in pool.deployments:
        if isinstance(d.model, RegisteredModel):
            found[d.model.name][d.model.version].add(d.name)
        for adapter in d.adapters:
            found[adapter.model][adapter.version].add(d.name)
    return {name: dict(versions) for name, versions in found.items()}


class AliasRegistry(Protocol):
    """What moving aliases needs from the registry (lifecycle.registry.models.Registry)."""

    def aliases(self, name: str) -> dict[str, str]: ...
    def set_alias(self, name: str, alias: str, version: str) -> None: ...
    def delete_alias(self, name: str, alias: str) -> None: ...
    def set_version_tags(self, name: str, version: str, tags: Mapping[str, str | None]) -> None: ...


def move_aliases(
    registry: AliasRegistry,
    plan: list[AliasMove],
    *,
    commit: str | None,
    pr: int | None,
    now: dt.datetime | None = None,
) -> list[str]:
    """Carry out `plan`: per model, check `production` is what the old pool pinned (or already the target),
    set `previous` then `production`, re-read both, and tag the new production version with the deploying
    commit, pull request and time (a None commit or pr removes a stale tag). Safe to run again after a
    failure part way. Raises AliasConflict, naming the model, what was expected and what was found, when
    `production` was moved by hand; models before it in the plan are done, none after it is touched.
    Returns one line per model saying what was done."""
    at = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
    lines = []
    for move in plan:
        found = _production(registry, move.model)
        if not move.accepts(found):
            pinned = f"v{_versions(move.before)}" if move.before else "no version of it"
            made = "" if move.hold else f" or {_label(move.production)} (this change, already made)"
            raise AliasConflict(
                f"{move.model}: production names {_label(found)}, expected {_expected(move)} (the pool file "
                f"pinned {pinned} before this change){made}: it was moved outside the pool file. Nothing was "
                "overwritten; set it back, or pin "
                f"{_label(found)} in the pool file by pull request, and apply again"
            )
        target = move.target(found)
        if found == target:
            done = f"{move.model}: production " + (
                ("kept at " if move.hold else "already ") + _label(found)
                if found is not None
                else ("stays unset" if move.hold else "already removed")
            )
        else:
            if found is not None:
                registry.set_alias(move.model, PREVIOUS, str(found))
            if target is None:
                registry.delete_alias(move.model, PRODUCTION)
            else:
                registry.set_alias(move.model, PRODUCTION, str(target))
            previous = f"previous := {_label(found)}, " if found is not None else ""
            done = f"{move.model}: {previous}production {_label(found)} -> {_label(target)}"
        confirmed = registry.aliases(move.model)
        moved_from = found not in (None, target)
        if _version(confirmed.get(PRODUCTION)) != target or (
            moved_from and _version(confirmed.get(PREVIOUS)) != found
        ):
            raise AliasConflict(
                f"{move.model}: after setting them, the aliases read {dict(sorted(confirmed.items()))}, not "
                f"production {_label(target)}"
                + (f", previous {_label(found)}" if moved_from else "")
                + ": another process is moving them at the same time"
            )
        if move.hold is not None:
            done += f" ({move.hold})"
        elif target is not None and found != target:  # moved now: an alias already there keeps its record
            registry.set_version_tags(
                move.model,
                str(target),
                {
                    DEPLOYED_COMMIT: commit,
                    DEPLOYED_PR: None if pr is None else str(pr),
                    DEPLOYED_AT: at,
                },
            )
            done += f" (deployed by {commit[:12] if commit else 'no commit'}" + (
                f", PR #{pr})" if pr is not None else ")"
            )
        lines.append(done)
    return lines


def _production(registry: AliasRegistry, model: str) -> int | None:
    return _version(registry.aliases(model).get(PRODUCTION))


def _version(value: str | None) -> int | None:
    return None if value is None else int(value)


def _label(version: int | None) -> str:
    return "nothing (unset)" if version is None else f"v{version}"


def _expected(move: AliasMove) -> str:
    return " or ".join(_label(v) for v in sorted(move.expected, key=lambda v: -1 if v is None else v))


def _versions(versions: tuple[int, ...]) -> str:
    return ", v".join(map(str, versions))
