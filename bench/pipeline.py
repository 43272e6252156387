"""One run of a recipe through every stage, timed, and the chain check + gate served two ways side by side.

    .venv/bin/python bench/pipeline.py [--recipe recipes/demo.yaml] [--set key=value ...]

1. prepare -> train -> quantize -> chain check + gate (one server per artifact) -> register, through
   `lifecycle.api` as `lifecycle train` runs it: wall time per stage, vLLM servers started, and how many times
   the merged weights were read in full by sha256 (this process plus the training worker's own count).
2. The same trained and quantized run, copied twice: the chain check and the gate with shared servers (as
   above) beside the chain check and the gate each starting their own (how runs were served before): servers
   started and wall time, and their ratio.

Prints figures; asserts nothing. Runs unchanged on a GPU host (any local model folder as the recipe's base).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def clock(into: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    into[name] = time.perf_counter() - start


def counting(serve: Callable[..., AbstractContextManager[Any]], started: list[Path]) -> Callable[..., Any]:
    def start(model_dir: Path, loras: dict[str, Path]) -> AbstractContextManager[Any]:
        started.append(model_dir)
        return serve(model_dir, loras)

    return start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

    from lifecycle import manifest
    from lifecycle.api import Lifecycle
    from lifecycle.gate.stage import Gate
    from lifecycle.quantize.chain import ChainCheck
    from lifecycle.runner import OpenRun, run_stage
    from lifecycle.runs import RunDir
    from lifecycle.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "cache").symlink_to(REPO / "mlruns" / "cache", target_is_directory=True)
        settings = load_settings({"LIFECYCLE_HOME": str(home)}, cwd=REPO)
        started: list[Path] = []
        plain = Lifecycle(settings, project_dir=REPO)
        api = Lifecycle(settings, project_dir=REPO, serve=counting(plain.serve(home / "engines"), started))
        times: dict[str, float] = {}
        manifest.reset_hash_stats()
        total = time.perf_counter()
        with clock(times, "prepare (checks, run dir, MLflow run)"):
            run = api.prepare(args.recipe, args.overrides)
        stage_start = {"t": time.perf_counter()}

        def on_stage(name: str, result: object) -> None:
            if result is None:
                stage_start["t"] = time.perf_counter()
            else:
                times[name] = time.perf_counter() - stage_start["t"]

        outcome = api.run(run, on_stage=on_stage)
        times["total"] = time.perf_counter() - total
        worker = json.loads((run.train_dir / "worker.json").read_text())
        merged = manifest.read(Path(outcome.train.model_dir))
        here = manifest.hash_stats().times(merged)
        in_worker = worker.get("hashes", {}).get("model_reads")
        print(f"recipe {args.recipe} {' '.join(args.overrides)}: one run, {os.cpu_count()} CPUs")
        for name, seconds in times.items():
            label = "chain check + gate (lm-eval)" if name == "chain" else name
            print(f"  {label:42s} {seconds:8.1f} s")
        print(f"  vLLM servers started                       {len(started):8d}")
        print(
            f"  full reads of the merged weights           {here:8.1f} here"
            + (f" + {in_worker} in the training worker" if in_worker is not None else "")
        )
        print(
            f"  gate {'passed' if outcome.gate.passed else 'FAILED'}; chain accuracy {outcome.chain.accuracy}"
        )

        # the same artifacts, served two ways
        results: dict[str, tuple[int, float]] = {}
        for way in ("shared", "separate"):
            copy = RunDir(home / f"copy-{way}")
            shutil.copytree(run.path, copy.path, ignore=shutil.ignore_patterns("engines", "chain", "gate"))
            for stage in ("chain", "gate", "register"):
                copy.discard(stage)
            began: list[Path] = []
            serve = counting(plain.serve(home / f"engines-{way}"), began)
            gate = Gate(serve, plain.evals_dir, plain.find_production)
            opened = OpenRun.open(copy, None)
            start = time.perf_counter()
            run_stage(ChainCheck(serve, gate=gate.needs if way == "shared" else None), opened)
            run_stage(gate, opened)
            results[way] = (len(began), time.perf_counter() - start)
        (s_n, s_t), (p_n, p_t) = results["shared"], results["separate"]
        print("chain check + gate on the same run:")
        print(f"  one server per artifact    {s_n} servers  {s_t:8.1f} s")
        print(f"  a server per stage         {p_n} servers  {p_t:8.1f} s")
        print(f"  ratio (shared / separate)             {s_t / p_t:8.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
