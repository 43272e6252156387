"""The platform's overhead on training: `lifecycle`'s training stage vs a plain trl script, same steps, same data.

Both run in this one invocation, back to back, as fresh processes, on the demo recipe (or --recipe). The plain
script does only what a user would hand-write: load, SFTTrainer with the same settings, train, save the merged
model. The platform additionally copies the data into a run directory, opens an MLflow run, mixes in the
recipe's replay data, commits checkpoints with manifests, saves the adapter, merges, hashes and verifies the
weights, and logs it all. `--accuracy` also measures held-out accuracy by HF generate before and after (off by
default: the chain check measures it on the served models).

    .venv/bin/python bench/train_overhead.py [--recipe recipes/demo.yaml] [--steps 150] [--repeats 1] [--accuracy]

Prints wall times, the ratio, and how many times over the merged weights were hashed in full during the
training stage (worker and launcher together). Runs unchanged on a GPU host (the recipe's model may be any local
folder).
"""

from __future__ import annotations

import argparse
import os
import shutil
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
import json, sys
from pathlib import Path
from lifecycle import manifest
from lifecycle.recipe.load import load_recipe
from lifecycle.registry.tracking import Tracker
from lifecycle.train import stage
recipe, home, runs, steps = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
loaded = load_recipe(recipe, [f"training.max_steps={steps}"])
tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")
run = stage.prepare(loaded, runs, tracker, Path.cwd())
launcher = stage.LocalLauncher(cache_dir=home / "cache")
if hasattr(stage, "Train"):  # stages as objects run by lifecycle.runner
    from lifecycle.runner import OpenRun, run_stage
    result = run_stage(stage.Train(launcher), OpenRun.open(run, tracker))
else:
    result = stage.run(run, launcher, tracker)
print(f"held-out accuracy {result.base_eval_accuracy} -> {result.eval_accuracy}")
model = manifest.read(Path(result.model_dir))
worker = json.loads((Path(result.model_dir).parent / "worker.json").read_text())
in_worker = (worker.get("hashing") or {}).get("model_times", float("nan"))
print(f"full hashes of the merged weights: {in_worker + manifest.hash_stats().times(model, manifest.WEIGHTS):g}")
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        argv, check=True, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--accuracy", action="store_true", help="measure held-out accuracy in the worker too")
    args = parser.parse_args()

    from lifecycle.recipe.load import load_recipe
    from lifecycle.recipe.schema import LoraMethod
    from lifecycle.registry.tracking import Tracker
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
    if args.accuracy:
        from lifecycle.train.worker import ACCURACY_ENV

        env[ACCURACY_ENV] = "1"
    # The MLflow store exists before timing, as on any machine after its first run (creating its schema
    # takes a couple of seconds, once); each platform run gets a fresh runs folder in it.
    store = Path(tempfile.mkdtemp(prefix="train-overhead-"))
    (store / "cache").symlink_to(cache)
    Tracker(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts")
    plain: list[float] = []
    platform: list[float] = []
    hashes = ""
    for i in range(args.repeats):
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
                )[0]
            )
        argv = [
            sys.executable,
            "-c",
            PLATFORM,
            args.recipe,
            str(store),
            str(store / f"runs-{i}"),
            str(args.steps),
        ]
        wall, out = timed(argv, env)
        platform.append(wall)
        hashes = next((line for line in out.splitlines() if line.startswith("full hashes")), hashes)
    shutil.rmtree(store, ignore_errors=True)
    best_plain, best_platform = min(plain), min(platform)
    print(f"recipe {args.recipe}, {args.steps} steps, best of {args.repeats}")
    print(f"  plain trl script          {best_plain:8.1f} s")
    print(f"  lifecycle training stage  {best_platform:8.1f} s")
    print(
        f"  ratio (platform / plain)  {best_platform / best_plain:8.2f}x   overhead {best_platform - best_plain:+.1f} s"
    )
    print(f"  {hashes or 'full hashes of the merged weights: not reported'} (per run, training stage)")


if __name__ == "__main__":
    main()
