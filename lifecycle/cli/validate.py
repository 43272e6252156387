"""`lifecycle validate FILE...`: check recipes, and pool files (a top-level `deployments`), without running
anything."""

from __future__ import annotations

from pathlib import Path

import typer

from lifecycle.cli.output import console, console_err
from lifecycle.errors import RecipeError, UserInputError
from lifecycle.recipe.load import load_recipe


def validate(
    files: list[Path] = typer.Argument(
        ...,
        help="Recipe YAML files, pool files (serving/pool.yaml) or routing policies (serving/routing.yaml).",
    ),
    override: list[str] = typer.Option([], "--set", "-s", help="key.path=value, applied before validation."),
) -> None:
    """Validate recipes as `lifecycle train` would before starting: schema, every data row, gate tasks and their
    metrics, the base model, and the quantization scheme on the serving target. A pool file gets its schema and
    the rules across deployments (no MLflow needed); a routing policy its schema and every route target checked
    against the pool file it names. Every problem is reported as FILE:LINE: field: message;
    exit code 2 if any."""
    from lifecycle.cli.context import load_context
    from lifecycle.cli.pool import validate_pool
    from lifecycle.pool.load import is_pool_file
    from lifecycle.route.load import is_policy_file

    ctx = load_context()
    failed = False
    for path in files:
        if is_pool_file(path):
            failed = not validate_pool(path) or failed
            continue
        if is_policy_file(path):
            failed = not validate_policy(path) or failed
            continue
        try:
            loaded = load_recipe(path, override)
            checked = ctx.api.preflight(loaded)
        except RecipeError as exc:
            failed = True
            for problem in exc.problems:
                console_err.print(problem, markup=False, soft_wrap=True)
            continue
        except UserInputError as exc:
            failed = True
            console_err.print(f"{path}: {exc}", markup=False, soft_wrap=True)
            continue
        target = checked.target
        console.print(
            f"[green]ok[/] {path}  ({loaded.recipe.name}: {loaded.recipe.method.kind}, "
            f"launch {loaded.recipe.launch.kind}, quantize {target.requested} -> {target.scheme} on {target.target})"
        )
    if failed:
        raise typer.Exit(2)


def validate_policy(path: Path) -> bool:
    """A routing policy: its schema, and its routes against the pool file it names. False if it failed."""
    from lifecycle.route.load import load_policy

    try:
        loaded = load_policy(path)
    except RecipeError as exc:
        for problem in exc.problems:
            console_err.print(problem, markup=False, soft_wrap=True)
        return False
    policy = loaded.policy
    console.print(
        f"[green]ok[/] {path}  (routing: {len(policy.tenants)} tenants, {len(policy.upstreams)} upstreams, "
        f"{len(policy.routes)} routes)",
        soft_wrap=True,
    )
    return True
