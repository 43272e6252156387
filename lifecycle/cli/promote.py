"""`lifecycle promote NAME VERSION`: pin a registered version in the pool file on a new branch, push it, open the
pull request (lifecycle.promote does the work)."""

from __future__ import annotations

from pathlib import Path

import typer

from lifecycle.cli.output import console

DEFAULT_POOL = Path("serving/pool.yaml")


def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Registered model version."),
    pool: Path = typer.Option(DEFAULT_POOL, "--pool", help="The pool file the promotion changes."),
    remote: str = typer.Option("origin", "--remote", help="The git remote to push the branch to."),
    deployment: str = typer.Option(
        None, "--deployment", help="The deployment to pin it on (default: those serving the model, else new)."
    ),
) -> None:
    """Refuse a version that failed its gate, lacks gate evidence or whose artifact does not verify; otherwise
    commit the pool change on branch promote/NAME-vVERSION, push it, and open a pull request (GitHub, with
    GITHUB_TOKEN set; GITHUB_API_URL and GITHUB_REPOSITORY override the API and the repository), or print the
    exact next step. Exit 2 when refused."""
    from lifecycle.cli.context import load_context
    from lifecycle.pool import diff as pool_diff
    from lifecycle.promote.promote import GitHubSettings
    from lifecycle.promote.promote import promote as run_promote
    from lifecycle.promote.versions import RegisteredVersions

    ctx = load_context()
    ctx.check_store()
    settings = ctx.settings
    github = GitHubSettings(
        token=settings.github_token, api_url=settings.github_api_url, repository=settings.github_repository
    )
    done = run_promote(
        name,
        version,
        pool,
        versions=RegisteredVersions(ctx.api.registry),
        github=github,
        remote=remote,
        deployment=deployment,
        say=lambda line: console.print(line, markup=False, soft_wrap=True),
    )
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
