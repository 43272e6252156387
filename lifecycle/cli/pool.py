"""The pool file's side of `lifecycle validate` and `lifecycle verify` (they dispatch here for a pool file): the
checks, then what the change would run: each deployment's vLLM command line and the diff of its SkyServe service
file against the pool at a base git ref."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lifecycle.cli.output import console, console_err

if TYPE_CHECKING:
    from lifecycle.pool.load import LoadedPool


def load_or_exit(path: Path) -> LoadedPool:
    """The pool file validated, or every problem printed (FILE:LINE: field: message) and exit code 2."""
    from lifecycle.errors import RecipeError
    from lifecycle.pool.load import load_pool

    try:
        return load_pool(path)
    except RecipeError as exc:
        for problem in exc.problems:
            console_err.print(problem, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None


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


def verify_pool(path: Path, base: str | None = None) -> None:
    """Every pin against the registry; exit 2 naming the deployment and the line of each problem. Then what would
    change: the vLLM command line per deployment and the SkyServe service files diffed against the pool at `base`
    (default: the merge-base with origin/main, else HEAD)."""
    from lifecycle.cli.context import load_context
    from lifecycle.pool.verify import verify_pool as check
    from lifecycle.promote.versions import RegisteredVersions

    loaded = load_or_exit(path)
    ctx = load_context()
    ctx.check_store()
    versions = RegisteredVersions(ctx.api.registry)
    problems = check(loaded, versions, where=versions.where)
    for problem in problems:
        console_err.print(problem, markup=False, soft_wrap=True)
    show_changes(loaded, base)
    if problems:
        raise typer.Exit(2)
    pinned = sum(len(d.adapters) + (d.model.kind == "registered") for d in loaded.pool.deployments)
    console.print(
        f"[green]ok[/] {path}: every pinned version ({pinned}) matches {versions.where}", soft_wrap=True
    )


def show_changes(loaded: LoadedPool, base: str | None) -> None:
    """Each deployment's vLLM command line, and the unified diff of the SkyServe service files against `base`."""
    from lifecycle.pool.sky import diff_services, render_services, vllm_command

    pool_file, label, before = base_services(loaded.path, base)
    after = render_services(loaded.pool, pool_file=pool_file)
    console.print("vLLM on each replica (artifact folders shown as /verified/...):", soft_wrap=True)
    for deployment in sorted(loaded.pool.deployments, key=lambda d: d.name):
        console.print(
            f"  {deployment.name}: {shlex.join(vllm_command(deployment))}", markup=False, soft_wrap=True
        )
    if not loaded.pool.deployments:
        console.print("  (no deployments)")
    diff = diff_services(before, after)
    if diff:
        console.print(f"SkyServe service files, against {label}:", markup=False, soft_wrap=True)
        console.print(diff.rstrip("\n"), markup=False, soft_wrap=True, highlight=False)
    else:
        console.print(f"SkyServe service files: no change against {label}", markup=False, soft_wrap=True)


def base_services(path: Path, base: str | None) -> tuple[str, str, dict[str, str]]:
    """(the pool file's path in its repository, what the base is, the service files rendered from the pool file
    as committed there). Outside git, or where the file is not committed at the base: no service files."""
    from lifecycle.errors import PromotionFailed, PromotionRefused, RecipeError, UserInputError
    from lifecycle.pool.load import parse_pool
    from lifecycle.pool.sky import render_services
    from lifecycle.promote.git import Git

    try:
        git = Git.at(path.resolve())
    except PromotionRefused:
        return str(path), "nothing (the pool file is not in a git repository)", {}
    rel = git.relative(path)
    if base is not None:
        try:
            ref = git.run("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}")
        except PromotionFailed:
            raise UserInputError(f"--base {base}: not a commit in {git.root}") from None
        label = f"{base} ({ref[:12]})"
    else:
        try:
            git.run("rev-parse", "--verify", "--quiet", "origin/main^{commit}")
            ref = git.run("merge-base", "HEAD", "origin/main")
            label = f"the merge-base with origin/main ({ref[:12]})"
        except PromotionFailed:
            try:
                ref = git.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
            except PromotionFailed:
                return rel, "nothing (no commit yet)", {}
            label = f"HEAD ({ref[:12]})"
    text = git.show(ref, rel)
    if text is None:
        return rel, f"nothing ({rel} is not in {label})", {}
    try:
        before = parse_pool(text, path)
    except RecipeError as exc:
        console_err.print(
            f"{rel} at {label} is not a valid pool ({len(exc.problems)} problems): diffed against nothing"
        )
        return rel, f"nothing ({rel} at {label} is not valid)", {}
    return rel, label, render_services(before.pool, pool_file=rel)
