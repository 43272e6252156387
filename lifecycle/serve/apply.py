"""`lifecycle apply serving/pool.yaml`, what CI runs when a promotion is merged: make the pool running here what
the file says, and only then move the registry's aliases.

Order, and why:
1. One apply at a time (a lock beside the pool's state file): a second is refused at once, naming the first.
2. The aliases' compare-and-set is checked before anything changes: if someone moved `production` by hand, the
   apply stops here, with the pool untouched, so pool and aliases still agree.
3. The running pool reconciles (lifecycle.serve.pool): a change that fails its smoke check is reverted there, the
   aliases are not touched, and the apply fails.
4. The aliases move (`previous`, then `production`) and the new production versions are tagged with the commit
   and pull request. Applying the same file again changes nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from lifecycle import locks
from lifecycle.errors import AliasConflict, PoolBusy, RolloutFailed, ServeError
from lifecycle.pool.aliases import AliasMove, AliasRegistry, alias_plan, move_aliases
from lifecycle.pool.load import LoadedPool
from lifecycle.pool.schema import Pool
from lifecycle.serve.control import ControlClient

LOCK_NAME = "apply.lock"


@dataclass(frozen=True)
class Applied:
    actions: tuple[str, ...]
    timings: tuple[tuple[str, float], ...]
    aliases: tuple[str, ...]
    seconds: float


def apply_local(
    loaded: LoadedPool,
    client: ControlClient,
    registry: AliasRegistry,
    *,
    commit: str | None,
    pr: int | None,
    lock_dir: Path,
) -> Applied:
    with apply_lock(lock_dir):
        check_aliases(registry, alias_plan(client.status().pool, loaded.pool))
        answer = client.apply(loaded.text, loaded.path, commit=commit, pr=pr)
        if not answer.ok:
            error = answer.error or "the pool did not say why"
            raise RolloutFailed(error) if answer.reverted else ServeError(error)
        before = answer.before or Pool()
        after = answer.after or Pool()
        lines = move_aliases(registry, alias_plan(before, after), commit=commit, pr=pr)
        return Applied(
            actions=tuple(answer.actions),
            timings=tuple(answer.timings),
            aliases=tuple(lines),
            seconds=answer.seconds,
        )


def aliases_at_start(registry: AliasRegistry, pool: Pool, *, commit: str | None) -> list[str]:
    """A pool `lifecycle serve` started from a file serves that file: its versions become production, as an
    apply onto an empty pool would make them (AliasConflict where production names another version)."""
    return move_aliases(registry, alias_plan(Pool(), pool), commit=commit, pr=None)


def check_aliases(registry: AliasRegistry, plan: list[AliasMove]) -> None:
    """The compare half of the compare-and-set, before anything changes: AliasConflict if `production` of a model
    the change moves is neither what the running pool pins nor the target (the same rule `move_aliases` keeps)."""
    for move in plan:
        value = registry.aliases(move.model).get("production")
        found = None if value is None else int(value)
        if not move.accepts(found):
            expected = " or ".join(
                f"v{v}" if v is not None else "unset" for v in sorted(move.expected, key=str)
            )
            raise AliasConflict(
                f"{move.model}: production names v{found}, but the running pool pins {expected}: it was moved "
                "outside the pool file. Nothing was changed; set it back, or pin that version by pull request"
            )


def apply_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """One apply at a time on this machine; the second is refused at once, naming the holder."""
    path = folder / LOCK_NAME
    return locks.held(
        path,
        lambda holder: PoolBusy(f"another apply is running (process {holder}; lock {path}); wait for it"),
    )
