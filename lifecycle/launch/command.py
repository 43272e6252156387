"""The one command that runs the training stage, wherever it runs.

The local launcher executes it in the run directory; the SkyPilot task renders it, unchanged, as its `run:`
(the run directory is the task's workdir). Only the environment differs: LIFECYCLE_OUTPUT_DIR says where
checkpoints and the final model go (the run's `train/` folder locally, a bucket mount on a cloud node).
"""

from __future__ import annotations

import shlex

RECIPE_IN_RUN = "recipe.yaml"
OUTPUT_ENV = "LIFECYCLE_OUTPUT_DIR"
LOCAL_OUTPUT = "train"


def worker_argv() -> list[str]:
    return ["lifecycle", "worker", "train", RECIPE_IN_RUN]


def worker_command() -> str:
    return shlex.join(worker_argv())
