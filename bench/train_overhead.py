"""The platform's overhead on training: `lifecycle`'s training stage vs a plain trl script, same steps, same data.

Both run in this one invocation, back to back, as fresh processes, on the demo recipe (or --recipe). The plain
script does only what a user would hand-write: load, SFTTrainer with the same settings, train, save the merged
model. The platform additionally copies the data into a run directory, opens an MLflow run, measures held-out
accuracy before and after, commits checkpoints with manifests, merges and verifies the weights, and logs it all.

    .venv/bin/python bench/train_overhead.py [--recipe recipes/demo.yaml] [--steps 150] [--repeats 1]

Prints wall times and the ratio. Runs unchanged on a GPU host (the recipe's model may be any local folder).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLAIN = r"""
import json, sys, torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
base, train_file, out, steps, lr, bs, max_len, seed, r, alpha = sys.argv[1:11]
rows = [json.loads(l) for l in open(train_file)]
data = Dataset.from_list([{"prompt": x["messages"][:-1], "completion": x["messages"][-1:]} for x in rows])
tok = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
cfg = SFTConfig(output_dir=out, max_steps=int(steps), learning_rate=float(lr), per_device_train_batch_size=int(bs),
                max_length=int(max_len), seed=int(seed), use_cpu=not torch.cuda.is_available(), bf16=False,
                gradient_checkpointing=False, save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=50)
trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,
                     peft_config=LoraConfig(r=int(r), lora_alpha=float(alpha), target_modules="all-linear", task_type="CAUSAL_LM"))
trainer.train()
trainer.model.merge_and_unload().to(torch.bfloat16).save_pretrained(out + "/model")
tok.save_pretrained(out + "/model")
"""

PLATFORM = r"""
import sys
from pathlib import Path
from lifecycle.recipe.load import load_recipe
from lifecycle.registry.tracking import Tracker
from lifecycle.train import stage
recipe, home, steps = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
loaded = load_recipe(recipe, [f"training.max_steps={steps}"])
tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")
run = stage.prepare(loaded, home / "runs", tracker, Path.cwd())
result = stage.run(run, stage.LocalLauncher(cache_dir=home / "cache"), tracker)
print(f"held-out accuracy {result.base_eval_accuracy} -> {result.eval_accuracy}")
"""


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from lifecycle.recipe.load import load_recipe
    from lifecycle.recipe.schema import LoraMethod
    from lifecycle.train.base import resolve_base

    recipe = load_recipe(args.recipe).recipe
    if not isinstance(recipe.method, LoraMethod):
        sys.exit("this benchmark compares LoRA recipes")
    cache = REPO / "mlruns" / "cache"
    base = resolve_base(
        recipe.model, cache
    )  # built (or found) before timing: both sides start from the same folder
    t = recipe.training
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    plain, platform = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            plain.append(
                timed(
                    [
                        sys.executable,
                        "-c",
                        PLAIN,
                        str(base),
                        str(recipe.data.train),
                        tmp,
                        str(args.steps),
                        str(t.learning_rate),
                        str(t.batch_size),
                        str(t.max_length),
                        str(t.seed),
                        str(recipe.method.r),
                        str(recipe.method.alpha),
                    ],
                    env,
                )
            )
        with tempfile.TemporaryDirectory() as home:
            (Path(home) / "cache").symlink_to(cache)
            platform.append(timed([sys.executable, "-c", PLATFORM, args.recipe, home, str(args.steps)], env))
    best_plain, best_platform = min(plain), min(platform)
    print(f"recipe {args.recipe}, {args.steps} steps, best of {args.repeats}")
    print(f"  plain trl script          {best_plain:8.1f} s")
    print(f"  lifecycle training stage  {best_platform:8.1f} s")
    print(
        f"  ratio (platform / plain)  {best_platform / best_plain:8.2f}x   overhead {best_platform - best_plain:+.1f} s"
    )


if __name__ == "__main__":
    main()
