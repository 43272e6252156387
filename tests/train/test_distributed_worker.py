"""The real worker under a real torchrun: two processes on the CPU (gloo), the tiny model, a LoRA. Both ranks
finish; rank 0 alone writes one model folder, one manifest and `worker.json`; every rank's files are in each
checkpoint's manifest; and the run learns exactly what one process with the same global batch learns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle import manifest
from lifecycle.launch.checkpoints import is_committed
from lifecycle.launch.local import child_env
from lifecycle.runs import RunDir

pytestmark = pytest.mark.slow
STEPS = ["training.max_steps=10", "training.checkpoint_every=5"]


def run_worker(run: RunDir, home: Path, processes: int) -> subprocess.CompletedProcess[str]:
    worker = [sys.executable, "-m", "lifecycle.cli.app", "worker", "train", "recipe.yaml"]
    if processes > 1:
        worker = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                  "-m", *worker[2:]]  # fmt: skip
    env = child_env(run.train_dir.resolve(), home / "cache")
    done = subprocess.run(worker, cwd=run.path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_two_ranks_train_together_and_rank_zero_alone_writes(
    prepared_run,  # type: ignore[no-untyped-def]
    lifecycle_home: Path,
) -> None:
    alone = prepared_run("ddp-one", [*STEPS, "training.batch_size=8"])
    pair = prepared_run("ddp-two", [*STEPS, "training.batch_size=4"])  # per process: the same global batch
    run_worker(alone, lifecycle_home, 1)
    done = run_worker(pair, lifecycle_home, 2)

    assert done.stdout.count("trained 10 steps") == 1  # rank 0 reports, rank 1 says nothing
    one = json.loads((alone.train_dir / "worker.json").read_text())
    two = json.loads((pair.train_dir / "worker.json").read_text())
    assert two["steps"] == 10 and two["model_manifest_digest"] and two["base_manifest_digest"]
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)  # same data, same steps, same loss
    written = manifest.verify(pair.train_dir / "model")
    assert written.digest == two["model_manifest_digest"]
    assert set(written.files) == set(manifest.read(alone.train_dir / "model").files)

    for step in (5, 10):
        checkpoint = pair.train_dir / "checkpoints" / f"checkpoint-{step}"
        assert is_committed(checkpoint)
        listed = manifest.read(checkpoint).files
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(listed)  # sealed after both ranks wrote
