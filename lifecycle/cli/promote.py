"""`lifecycle promote NAME VERSION`: pin a registered version in the pool file on a new branch, push it, open the
pull request. `lifecycle rollback NAME`: the same for the version that served before (lifecycle.promote does the
work)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lifecycle.cli.output import console

if TYPE_CHECKING:
    from lifecycle.promote.promote import GitHubSettings, Promotion
    from lifecycle.promote.versions import RegisteredVersions

DEFAULT_POOL = Path("serving/pool.yaml")
POOL_OPTION = typer.Option(DEFAULT_POOL, "--pool", help="The pool file the change is made to.")
REMOTE_OPTION = typer.Option("origin", "--remote", help="The git remote to push the branch to.")


def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Registered model version."),
    pool: Path = POOL_OPTION,
    remote: str = REMOTE_OPTION,
    deployment: str = typer.Option(
        None, "--deployment", help="The deployment to pin it on (default: those serving the model, else new)."
    ),
) -> None:
    """Refuse a version that failed its gate, lacks gate evidence or whose artifact does not verify; otherwise
    commit the pool change on branch promote/NAME-vVERSION, push it, and open a pull request (GitHub, with
    GITHUB_TOKEN set; GITHUB_API_URL and GITHUB_REPOSITORY override the API and the repository), or print the
    exact next step. Exit 2 when refused."""
    from lifecycle.promote.promote import promote as run_promote

    versions, github = _registry_and_github()
    done = run_promote(
        name,
        version,
        pool,
        versions=versions,
        github=github,
        remote=remote,
        deployment=deployment,
        say=_say,
    )
    _report(done)


def rollback(
    name: str = typer.Argument(..., help="A deployment in the pool file, or a registered model name."),
    pool: Path = POOL_OPTION,
    remote: str = REMOTE_OPTION,
) -> None:
    """Open a pull request that pins again the version the model's 'previous' alias names (set by `lifecycle
    apply` when a deployed change replaced it): branch rollback/NAME-vVERSION, the same checks and pull request
    as a promotion. A deployment name changes only that deployment; a model name every deployment serving it.
    Exit 2 when refused (no 'previous' alias, a failed gate, a dirty pool file...)."""
    from lifecycle.promote.promote import rollback as run_rollback

    versions, github = _registry_and_github()
    done = run_rollback(name, pool, versions=versions, github=github, remote=remote, say=_say)
    _report(done)


def _registry_and_github() -> tuple[RegisteredVersions, GitHubSettings]:
    from lifecycle.cli.context import load_context
    from lifecycle.promote.promote import GitHubSettings
    from lifecycle.promote.versions import RegisteredVersions

    ctx = load_context()
    ctx.check_store()
    settings = ctx.settings
    github = GitHubSettings(
        token=settings.github_token, api_url=settings.github_api_url, repository=settings.github_repository
    )
    return RegisteredVersions(ctx.api.registry), github


def _say(line: str) -> None:
    console.print(line, markup=False, soft_wrap=True)


def _report(done: Promotion) -> None:
    from lifecycle.pool import diff as pool_diff

    for line in pool_diff.describe(done.actions):
        console.print(f"  {line}", markup=False, soft_wrap=True)
    console.print(
        f"[green]pushed[/] {done.branch} ({done.commit[:12]}) for {', '.join(done.deployments)}",
        soft_wrap=True,
    )
    if done.pull is not None:
        console.print(f"[green]pull request #{done.pull.number}[/] {done.pull.url}", soft_wrap=True)
    elif done.next_step:
        console.print(f"next: {done.next_step}", markup=False, soft_wrap=True)
