"""The gate's lm-eval tasks through lm-eval's `hf` backend vs through a vLLM server: wall time, one run each.

    .venv/bin/python bench/gate_backends.py                  # tiny base (built into mlruns/cache), 2 cores
    .venv/bin/python bench/gate_backends.py --model /models/llama-8b --limit 500   # a GPU host, a real model

Runs every task once in-process (`hf`: transformers; the model load is reported apart) and once against a
vLLM server started from the serving environment (start-up reported apart), then prints per task the two wall
times and their ratio, and how often the two backends agree item by item. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lifecycle.engines.vllm import VllmSpec
from lifecycle.engines.vllm_server import serve
from lifecycle.gate.lmeval import TaskRun, evaluate_hf, evaluate_server, resolve_tasks
from lifecycle.settings import load_settings

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="HF model folder (default: the built-in tiny base)")
    parser.add_argument("--tasks", nargs="+", default=["support-tickets", "general-facts"])
    parser.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=16, help="hf batch; vLLM prompts per request")
    parser.add_argument("--num-concurrent", type=int, default=8, help="requests in flight to vLLM")
    parser.add_argument("--chat", action="store_true", help="chat tasks through /v1/chat/completions")
    parser.add_argument("--max-model-len", type=int, default=None, help="vLLM context (default: model's)")
    parser.add_argument("--serve-python", type=Path, help="the serving environment's python")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    settings = load_settings(cwd=REPO)
    if args.model is None:
        from lifecycle.train.tiny_base import build_tiny_llama

        args.model = build_tiny_llama(settings.cache_dir / "base-models")
    model = args.model.resolve()
    with tempfile.TemporaryDirectory(prefix="gate-bench-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        resolved = resolve_tasks(args.tasks, REPO / "evals", workdir)
        print(f"model {model}\ntasks {', '.join(resolved.names)} (limit {args.limit or 'none'})\n")

        started = time.monotonic()
        hf = evaluate_hf(resolved, model, limit=args.limit, batch_size=args.batch_size)
        hf_total = time.monotonic() - started

        spec = VllmSpec(model_dir=model, served_model_name="gate-bench", max_model_len=args.max_model_len)
        started = time.monotonic()
        python = args.serve_python or settings.serve_python
        with serve(spec, python=python, workdir=workdir / "vllm") as server:
            start_s = time.monotonic() - started
            started = time.monotonic()
            served = evaluate_server(
                resolved,
                completions_url=server.completions_url,
                chat_url=server.base_url + "/chat/completions" if args.chat else None,
                model_name=spec.model_name,
                tokenizer_dir=model,
                limit=args.limit,
                num_concurrent=args.num_concurrent,
                batch_size=args.batch_size,
            )
            vllm_total = time.monotonic() - started

    _report(hf, served)
    hf_tasks, vllm_tasks = sum(r.wall_s for r in hf), sum(r.wall_s for r in served)
    print(f"\nhf:   {hf_tasks:7.2f} s in tasks, {hf_total - hf_tasks:5.2f} s imports, model load and set-up")
    print(f"vLLM: {vllm_tasks:7.2f} s in tasks, {vllm_total - vllm_tasks:5.2f} s client set-up")
    print(f"vLLM server start: {start_s:.1f} s (not in the ratio)")
    print(f"ratio hf / vLLM over all tasks: {hf_tasks / vllm_tasks:.2f}x")
    print(
        f"  with start-up and load: hf {hf_total:.1f} s vs vLLM {start_s + vllm_total:.1f} s "
        f"({hf_total / (start_s + vllm_total):.2f}x)"
    )


def _report(hf: list[TaskRun], served: list[TaskRun]) -> None:
    print(f"{'task':<18} {'n':>5} {'backend':<23} {'hf s':>7} {'vLLM s':>7} {'hf/vLLM':>8}  agreement")
    for a, b in zip(hf, served, strict=True):
        agree = []
        for metric, items in a.metrics.items():
            same = sum(items[i] == b.metrics[metric].get(i) for i in items)
            agree.append(
                f"{metric} {same}/{len(items)} (hf {a.aggregate[metric]:.3f}, vLLM {b.aggregate[metric]:.3f})"
            )
        if a.outputs:
            same = sum(a.outputs[i] == b.outputs.get(i) for i in a.outputs)
            agree.append(f"text {same}/{len(a.outputs)}")
        ratio = a.wall_s / b.wall_s if b.wall_s else float("inf")
        print(
            f"{a.task:<18} {a.n:>5} {b.backend:<23} {a.wall_s:>7.2f} {b.wall_s:>7.2f} {ratio:>7.2f}x  "
            + "; ".join(agree)
        )


if __name__ == "__main__":
    main()
