"""`lifecycle train RECIPE`: the stages in order, from a recipe to a checked model."""

from __future__ import annotations

from pathlib import Path

import typer

from lifecycle.cli.output import console
from lifecycle.errors import UserInputError


def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    override: list[str] = typer.Option([], "--set", "-s", help="key.path=value, applied before validation."),
    on: str | None = typer.Option(None, "--on", help="Override the recipe's launch: 'local' or 'sky'."),
    resume: bool = typer.Option(False, "--resume", help="Continue the newest unfinished run of this recipe."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Continue this run directory."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Sky launch: print the task, plan and cost only."),
) -> None:
    """Run a recipe: fine-tune, quantize, chain-check, gate and register. Continuing a run resumes from its last
    committed checkpoint and skips finished stages."""
    from lifecycle.cli.context import load_context
    from lifecycle.recipe.load import load_recipe
    from lifecycle.runs import RunDir
    from lifecycle.train import stage as train_stage

    overrides = list(override) + ([f"launch.kind={on}"] if on else [])
    ctx = load_context()
    ctx.check_store()  # the store answers, or exit 2 naming it: before minutes of checks and training
    if run_dir is not None:
        run = RunDir(run_dir)
        if not run.exists():
            raise UserInputError(f"{run_dir}: not a run directory (no run.json)")
        loaded = load_recipe(run.recipe_path)
    else:
        loaded = load_recipe(recipe, overrides)
        run = train_stage.find_resumable(ctx.settings.runs_dir, loaded) if resume else None  # type: ignore[assignment]
        if resume and run is None:
            others = train_stage.unfinished_runs(ctx.settings.runs_dir, loaded.recipe.name)
            hint = "".join(
                f"\n  {o.path}  (overrides: {' '.join(o.info().overrides) or 'none'})" for o in others[:5]
            )
            raise UserInputError(
                f"--resume: no unfinished run of recipe {loaded.recipe.name!r} with this file and these --set "
                f"values under {ctx.settings.runs_dir}"
                + (
                    f"; unfinished runs with other settings (continue one with --run-dir):{hint}"
                    if others
                    else ""
                )
            )
    if run is None:
        checked = ctx.preflight(loaded)  # everything knowable, before anything starts: exit 2 on a problem
        if dry_run:
            ctx.dry_run(loaded)
            return
        run = train_stage.prepare(loaded, ctx.settings.runs_dir, ctx.tracker, Path.cwd())
        console.print(f"run [bold]{run.info().run_id}[/] in {run.path}")
        ctx.keep_target(run, checked.target)
    else:
        if dry_run:
            ctx.dry_run(loaded)
            return
        console.print(f"continuing run [bold]{run.info().run_id}[/] in {run.path}")
        if not run.has("target"):
            ctx.keep_target(run, ctx.resolve_target(loaded))
    if not ctx.run_pipeline(run):
        raise typer.Exit(1)  # the gate failed: the run is complete and recorded, and nothing was registered
