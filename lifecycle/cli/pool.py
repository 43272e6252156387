"""The pool file's side of `lifecycle validate` and `lifecycle verify` (they dispatch here for a pool file)."""

from __future__ import annotations

from pathlib import Path

import typer

from lifecycle.cli.output import console, console_err


def validate_pool(path: Path) -> bool:
    """Static validation (no MLflow): the schema and the rules across deployments. False if it failed."""
    from lifecycle.errors import RecipeError
    from lifecycle.pool.load import load_pool

    try:
        loaded = load_pool(path)
    except RecipeError as exc:
        for problem in exc.problems:
            console_err.print(problem, markup=False, soft_wrap=True)
        return False
    count = len(loaded.pool.deployments)
    adapters = sum(len(d.adapters) for d in loaded.pool.deployments)
    console.print(f"[green]ok[/] {path}  (pool: {count} deployments, {adapters} adapters)", soft_wrap=True)
    return True


def verify_pool(path: Path) -> None:
    """Every pin against the registry; exit 2 naming the deployment and the line of each problem."""
    from lifecycle.cli.context import load_context
    from lifecycle.errors import RecipeError
    from lifecycle.pool.load import load_pool
    from lifecycle.pool.verify import verify_pool as check
    from lifecycle.promote.versions import RegisteredVersions

    try:
        loaded = load_pool(path)
    except RecipeError as exc:
        for problem in exc.problems:
            console_err.print(problem, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    ctx = load_context()
    ctx.check_store()
    versions = RegisteredVersions(ctx.api.registry)
    problems = check(loaded, versions, where=versions.where)
    for problem in problems:
        console_err.print(problem, markup=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)
    pinned = sum(len(d.adapters) + (d.model.kind == "registered") for d in loaded.pool.deployments)
    console.print(
        f"[green]ok[/] {path}: every pinned version ({pinned}) matches {versions.where}", soft_wrap=True
    )
