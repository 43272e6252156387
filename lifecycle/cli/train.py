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
    from lifecycle.cli.render import StageProgress
    from lifecycle.runs import RunDir
    from lifecycle.train import stage as train_stage

    overrides = list(override) + ([f"launch.kind={on}"] if on else [])
    ctx = load_context()
    api = ctx.api
    ctx.check_store()  # the store answers, or exit 2 naming it: before minutes of checks and training
    if run_dir is not None:
        run = RunDir(run_dir)
        if not run.exists():
            raise UserInputError(f"{run_dir}: not a run directory (no run.json)")
        loaded = api.load(run.recipe_path)
    else:
        loaded = api.load(recipe, overrides)
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
    if dry_run:
        if run is None:
            api.preflight(loaded)  # everything knowable, before anything is planned: exit 2 on a problem
        ctx.dry_run(loaded)
        return
    if run is None:
        run = api.prepare(loaded)  # every check first (exit 2 on a problem), then the run directory
        console.print(f"run [bold]{run.info().run_id}[/] in {run.path}")
    else:
        console.print(f"continuing run [bold]{run.info().run_id}[/] in {run.path}")
        api.ensure_target(run)
    with StageProgress(console) as progress:
        outcome = api.run(run, on_stage=progress)
    if outcome.registered is None:
        raise typer.Exit(1)  # the gate failed: the run is complete and recorded, and nothing was registered
