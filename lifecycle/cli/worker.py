"""`lifecycle worker train recipe.yaml`: the training stage as a process (hidden; launchers run it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from lifecycle.cli.output import console
from lifecycle.launch.command import LOCAL_OUTPUT, OUTPUT_ENV

app = typer.Typer(help="Stage workers, run by the launchers (local or SkyPilot).", no_args_is_help=True)


@app.command("train")
def train(
    recipe: Path = typer.Argument(..., help="The run's recipe.yaml."),
    output: Path = typer.Option(Path(LOCAL_OUTPUT), envvar=OUTPUT_ENV, help="Checkpoints and final model."),
    cache_dir: Path = typer.Option(
        Path.home() / ".cache" / "lifecycle", envvar="LIFECYCLE_CACHE_DIR", help="Built base models."
    ),
    accuracy: bool = typer.Option(
        False,
        "--accuracy",
        envvar="LIFECYCLE_TRAIN_ACCURACY",
        help="Also measure held-out accuracy with HF generate, before and after (the chain check measures it on "
        "the served models anyway).",
    ),
) -> None:
    """Train one recipe into OUTPUT; resumes from the newest committed checkpoint there."""
    from lifecycle.launch.distributed import distributed_launch_argv

    relaunch = distributed_launch_argv(os.environ, [sys.executable, "-m", "lifecycle.cli.app", *sys.argv[1:]])
    if relaunch is not None:
        os.execvp(relaunch[0], relaunch)  # torchrun/accelerate re-runs this same command once per GPU

    import datasets
    import transformers

    datasets.disable_progress_bars()  # one progress bar (ours) rather than a dozen
    transformers.utils.logging.disable_progress_bar()

    from lifecycle.cli.progress import TrainProgress
    from lifecycle.train.worker import run_worker

    progress = TrainProgress()
    try:
        result = run_worker(
            recipe,
            output,
            cache_dir,
            progress,
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            accuracy=accuracy,
        )
    finally:
        progress.close()
    line = f"trained {result.steps} steps"
    if result.eval_accuracy is not None:
        line += f"; held-out accuracy {result.base_eval_accuracy} -> {result.eval_accuracy}"
    console.print(line)
