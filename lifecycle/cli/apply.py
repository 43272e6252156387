"""`lifecycle apply serving/pool.yaml`: reconcile the running pool to the file, then move the aliases
(lifecycle.serve.apply does the work)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lifecycle.cli.output import console, console_err

if TYPE_CHECKING:
    from lifecycle.cli.context import Context
    from lifecycle.pool.load import LoadedPool
    from lifecycle.pool.schema import Pool
    from lifecycle.registry.models import Registry

DEFAULT_POOL = Path("serving/pool.yaml")


def apply(
    pool: Path = typer.Argument(DEFAULT_POOL, help="The pool file to apply (as merged)."),
    on: str = typer.Option(
        "local", "--on", help="local: the pool `lifecycle serve` runs here; sky: SkyServe."
    ),
    commit: str = typer.Option(
        None, "--commit", help="The merged commit (tagged on the versions it deploys)."
    ),
    pr: int = typer.Option(None, "--pr", help="The merged pull request's number (tagged likewise)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change; change nothing."),
) -> None:
    """Make the running pool what the file says, then move the registry's aliases.

    Check every pin against the registry, reconcile the pool (adapters hot-loaded; new weights blue-green:
    started, smoke-checked, traffic shifted, old servers stopped; a failed check reverts), then move the
    aliases `previous` and `production` with a compare-and-set and tag the versions with the commit and PR.
    One apply at a time; applying twice changes nothing. Exit 2 on a bad file or pin, 1 when a rollout failed
    (the pool serves what it served before)."""
    from lifecycle.cli.context import load_context
    from lifecycle.cli.pool import load_or_exit
    from lifecycle.errors import UserInputError
    from lifecycle.pool import diff as pool_diff
    from lifecycle.pool.verify import verify_pool
    from lifecycle.promote.versions import RegisteredVersions
    from lifecycle.serve.control import find_running, state_path

    if on not in ("local", "sky"):
        raise UserInputError(f"--on {on}: expected local or sky")
    loaded = load_or_exit(pool)
    ctx = load_context()
    ctx.check_store()
    registry = ctx.api.registry
    versions = RegisteredVersions(registry)
    problems = verify_pool(loaded, versions, where=versions.where)
    for problem in problems:
        console_err.print(problem, markup=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)
    if on == "sky":
        _apply_on_sky(ctx, loaded, registry, commit=commit, pr=pr, dry_run=dry_run)
        return
    client = find_running(ctx.settings)
    if client is None:
        raise UserInputError(
            f"no pool runs on this machine: start it with `lifecycle serve {pool}` (it serves the file as it is)"
        )
    if dry_run:
        for line in pool_diff.describe(pool_diff.diff(client.status().pool, loaded.pool)):
            console.print(line, markup=False, soft_wrap=True)
        return
    from lifecycle.serve.apply import apply_local

    done = apply_local(
        loaded, client, registry, commit=commit, pr=pr, lock_dir=state_path(ctx.settings).parent
    )
    for action, seconds in done.timings:
        console.print(f"[green]done[/] {action} ({seconds:.1f} s)", soft_wrap=True, highlight=False)
    if not done.actions:
        console.print("nothing to do: the pool already serves this", soft_wrap=True)
    for line in done.aliases:
        console.print(f"[green]alias[/] {line}", soft_wrap=True, highlight=False)
    console.print(f"[green]applied[/] {pool} in {done.seconds:.1f} s", soft_wrap=True)


def _apply_on_sky(
    ctx: Context, loaded: LoadedPool, registry: Registry, *, commit: str | None, pr: int | None, dry_run: bool
) -> None:
    """SkyServe runs the services (blue-green updates for new weights); the aliases move once SkyServe took every
    command, from the pool as committed before this one (the merge's first parent) to this one."""
    from lifecycle.pool.aliases import alias_plan, move_aliases
    from lifecycle.pool.sky import SKY_DIR
    from lifecycle.pool.sky_apply import apply_on_sky
    from lifecycle.serve.apply import apply_lock, check_aliases
    from lifecycle.serve.control import state_path

    workdir = Path.cwd()
    previous = _committed_before(loaded)
    with apply_lock(state_path(ctx.settings).parent):
        if previous is not None and not dry_run:
            check_aliases(registry, alias_plan(previous, loaded.pool))
        results = apply_on_sky(
            loaded.pool,
            workdir / SKY_DIR,
            dry_run=dry_run,
            workdir=workdir,
            secrets={"MLFLOW_TRACKING_URI": ctx.settings.tracking_uri},
            previous=previous,
            pool_file=os.path.relpath(loaded.path.resolve(), workdir),  # as the replicas see it
        )
        for result in results:
            console.print(
                f"[green]{result.status}[/] {result.command.describe()}", soft_wrap=True, highlight=False
            )
        if not results:
            console.print("nothing to do: SkyServe already runs this", soft_wrap=True)
        if dry_run:
            return
        if previous is None:
            console.print(
                f"aliases not moved: {loaded.path} has no committed parent version to compare with",
                soft_wrap=True,
            )
            return
        for line in move_aliases(registry, alias_plan(previous, loaded.pool), commit=commit, pr=pr):
            console.print(f"[green]alias[/] {line}", soft_wrap=True, highlight=False)


def _committed_before(loaded: LoadedPool) -> Pool | None:
    """The pool file as its last commit's first parent had it (what served before a merge), or None."""
    from lifecycle.errors import PromotionFailed, PromotionRefused, RecipeError
    from lifecycle.pool.load import parse_pool
    from lifecycle.promote.git import Git

    try:
        git = Git.at(loaded.path.resolve())
        text = git.show("HEAD^1", git.relative(loaded.path))
    except (PromotionRefused, PromotionFailed):
        return None
    if text is None:
        return None
    try:
        return parse_pool(text, loaded.path).pool
    except RecipeError:
        return None
