"""`lifecycle validate FILE...`: check recipes without running anything."""

from __future__ import annotations

from pathlib import Path

import typer

from lifecycle.cli.output import console, console_err
from lifecycle.errors import RecipeError
from lifecycle.recipe.load import load_recipe


def validate(
    files: list[Path] = typer.Argument(..., help="Recipe YAML files."),
    override: list[str] = typer.Option([], "--set", "-s", help="key.path=value, applied before validation."),
) -> None:
    """Validate recipes: every problem is reported with FILE:LINE: field: message; exit code 2 if any."""
    failed = False
    for path in files:
        try:
            loaded = load_recipe(path, override)
        except RecipeError as exc:
            failed = True
            for problem in exc.problems:
                console_err.print(problem, markup=False, soft_wrap=True)
            continue
        console.print(
            f"[green]ok[/] {path}  ({loaded.recipe.name}: {loaded.recipe.method.kind}, "
            f"launch {loaded.recipe.launch.kind})"
        )
    if failed:
        raise typer.Exit(2)
