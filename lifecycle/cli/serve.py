"""`lifecycle serve [serving/pool.yaml]`: run the pool on this machine; `--status`: what a running pool serves."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from lifecycle.cli.output import console, console_err
from lifecycle.serve.routing import audit_path, policy_for, router_endpoint

if TYPE_CHECKING:
    from lifecycle.cli.context import Context
    from lifecycle.pool.load import LoadedPool
    from lifecycle.promote.versions import OnDemandVersions
    from lifecycle.route.load import LoadedPolicy
    from lifecycle.settings import Settings

DEFAULT_POOL = Path("serving/pool.yaml")


def serve(
    pool: Path = typer.Argument(DEFAULT_POOL, help="The pool file to serve."),
    status: bool = typer.Option(False, "--status", help="Show what the pool running here serves, and exit."),
    host: str = typer.Option("127.0.0.1", "--host", help="Where the pool's endpoint listens."),
    port: int = typer.Option(8000, "--port", help="The pool's endpoint port (0: any free port)."),
    as_json: bool = typer.Option(False, "--json", help="With --status: the status as JSON."),
    policy: Path | None = typer.Option(
        None,
        "--policy",
        help="The routing policy (API keys, tenants, routes, upstreams); default: routing.yaml beside the pool file.",
    ),
    no_policy: bool = typer.Option(
        False, "--no-policy", help="No router: serve the pool's names to anyone who can reach the port."
    ),
) -> None:
    """Run the serving pool on this machine, behind one OpenAI-compatible endpoint.

    Artifacts are fetched from the registry and verified against their manifests, vLLM servers started from the
    serving environment, adapters loaded, each replica checked with real completions before it gets traffic;
    dead replicas are restarted. With a routing policy the endpoint is the router: API keys, residency, prompt
    shape, cost class, fallbacks, budgets, spans and an audit record per request. Ctrl-C stops everything. Change
    a running pool with `lifecycle apply`."""
    from lifecycle.cli.context import load_context

    ctx = load_context()
    if status:
        _status(ctx.settings, as_json)
        return
    _serve(ctx, pool, host, port, None if no_policy else policy_for(pool, policy))


def _serve(ctx: Context, pool: Path, host: str, port: int, policy: Path | None) -> None:
    from lifecycle.cli.pool import load_or_exit
    from lifecycle.promote.versions import OnDemandVersions
    from lifecycle.serve.artifacts import Artifacts
    from lifecycle.serve.control import state_path
    from lifecycle.serve.run import RunningPool, vllm_launch

    loaded = load_or_exit(pool)
    settings = ctx.settings
    endpoint = None
    if policy is not None:  # the router decides who reaches what, and records where each request went
        endpoint = router_endpoint(
            _policy_or_exit(policy, loaded), loaded.pool, settings, host=host, port=port
        )
    versions = OnDemandVersions(settings)
    say = lambda line: console.print(line, markup=False, soft_wrap=True)  # noqa: E731
    running = RunningPool(
        loaded,
        launch=vllm_launch(settings.serve_python),
        artifacts=Artifacts(versions, settings.cache_dir),
        workdir=settings.home / "serve" / "replicas",
        state_file=state_path(settings),
        host=host,
        port=port,
        say=say,
        endpoint=endpoint,
    )
    try:
        _aliases_follow(versions, loaded)
        names = sorted(running.front.routes)
        routed = f", routed by {policy} (audit log {audit_path(settings)})" if policy is not None else ""
        console.print(
            f"[green]serving[/] {pool} at {running.url}/v1 ({', '.join(names) or 'no deployments'}{routed}); "
            "Ctrl-C stops it",
            soft_wrap=True,
        )
        running.supervise_until_stopped()
    finally:
        running.stop()


def _policy_or_exit(path: Path, loaded: LoadedPool) -> LoadedPolicy:
    """The routing policy validated against the pool being served, or every problem printed and exit code 2."""
    from lifecycle.errors import RecipeError, UserInputError
    from lifecycle.route.load import load_policy

    try:
        return load_policy(path, loaded.pool)
    except RecipeError as exc:
        for problem in exc.problems:
            console_err.print(problem, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except UserInputError as exc:
        console_err.print(f"error: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _aliases_follow(versions: OnDemandVersions, loaded: LoadedPool) -> None:
    """The pool now serves the file: its versions become production where production is unset or already
    theirs. A registry that cannot be reached, or an alias moved by hand, is reported, never fatal: serving
    does not wait on the registry (`lifecycle verify --live` shows the drift)."""
    from lifecycle.errors import LifecycleError
    from lifecycle.promote.git import Git
    from lifecycle.serve.apply import aliases_at_start

    commit = None
    with contextlib.suppress(LifecycleError):
        commit = Git.at(loaded.path.resolve()).head()
    try:
        lines = aliases_at_start(versions.registry, loaded.pool, commit=commit)
    except LifecycleError as exc:
        console_err.print(f"[yellow]aliases not moved:[/] {exc}", soft_wrap=True, highlight=False)
        return
    for line in lines:
        console.print(f"alias {line}", markup=False, soft_wrap=True)


def _status(settings: Settings, as_json: bool) -> None:
    from lifecycle.serve.control import find_running

    client = find_running(settings)
    if client is None:
        console_err.print("no pool runs on this machine (start one with `lifecycle serve serving/pool.yaml`)")
        raise typer.Exit(1)
    status = client.status()
    if as_json:
        console.print_json(json.dumps(status.model_dump(mode="json")))
        return
    table = Table(title=f"pool {status.pool_path} at {status.front_url}/v1")
    for column in ("deployment", "serves", "replicas", "restarts", "adapters", "residency"):
        table.add_column(column)
    for d in status.deployments:
        healthy = sum(r.healthy for r in d.replicas)
        table.add_row(
            d.name,
            d.serves,
            f"{healthy}/{len(d.replicas)} healthy",
            str(sum(r.restarts for r in d.replicas)),
            ", ".join(d.adapters) or "-",
            d.residency,
        )
    console.print(table)
    if status.applied:
        applied = status.applied
        console.print(f"last apply: commit {applied.get('commit') or '-'}, PR {applied.get('pr') or '-'}")
    for line in status.events[-10:]:
        console.print(f"  {line}", markup=False, soft_wrap=True)
