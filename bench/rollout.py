"""Rollouts on a real vLLM pool with clients sending requests all the while: what each change costs.

    .venv/bin/python bench/rollout.py [--steps 60] [--replicas 1] [--clients 2]

Trains a short LoRA run of recipes/demo.yaml (its own store, the shared model cache), quantizes it, and serves a
pool of two deployments from it: `base` (the base weights, with the adapter hot-loadable) and `tickets` (the
quantized model). Then, with `--clients` threads per served name sending completions through the pool's endpoint:
1. an adapter's next version (a copy of the adapter: the same bytes under a new artifact) hot-loaded in place;
2. a quantization change (the quantized model replaced by the merged one, blue-green);
3. the same pool file applied again (nothing to do).
Prints per change: the time from the apply to the new version serving, the hot-load or replace time per replica,
requests sent and failed during it. Asserts nothing. Runs unchanged on a GPU host.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


class Clients:
    """Threads asking `model` through the pool's endpoint until stopped; counts answers and failures."""

    def __init__(self, url: str, model: str, count: int, pause_s: float = 0.05) -> None:
        self.url, self.model, self.pause_s = url, model, pause_s
        self.ok = 0
        self.failed: list[str] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _run(self) -> None:
        body = {"model": self.model, "prompt": "Ticket: my invoice is wrong. Category:", "max_tokens": 8}
        with requests.Session() as session:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    response = session.post(f"{self.url}/v1/completions", json=body, timeout=60)
                    good = response.status_code == 200
                    detail = f"{response.status_code} {response.text[:120]}"
                except requests.RequestException as exc:
                    good, detail = False, repr(exc)
                time.sleep(self.pause_s)  # a steady client, not a flood: the pool's cores also start servers
                with self._lock:
                    if good:
                        self.ok += 1
                        self.latencies.append(time.perf_counter() - start)
                    else:
                        self.failed.append(detail)

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

    from lifecycle.api import Lifecycle
    from lifecycle.errors import LifecycleError
    from lifecycle.pool.schema import Adapter, BaseWeights, Deployment, Pool, Quantization, RegisteredModel
    from lifecycle.results import QuantizeResult, TrainResult
    from lifecycle.serve.artifacts import Artifacts
    from lifecycle.serve.run import RunningPool, vllm_launch
    from lifecycle.settings import load_settings
    from lifecycle.train.base import base_manifest

    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-bench-rollout-"))
    home = tmp / "home"
    home.mkdir()
    (REPO / "mlruns" / "cache").mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(REPO / "mlruns" / "cache", target_is_directory=True)
    settings = load_settings({"LIFECYCLE_HOME": str(home)}, cwd=REPO)
    api = Lifecycle(settings, project_dir=REPO)
    print(f"training a {args.steps}-step LoRA run and quantizing it ...", flush=True)
    run = api.prepare(
        REPO / "recipes" / "demo.yaml", ["name=rollout-bench", f"training.max_steps={args.steps}"]
    )
    api.train(run)
    quantized = api.quantize(run)
    trained = run.load("train", TrainResult)
    assert isinstance(quantized, QuantizeResult) and trained.adapter_dir
    adapter_v2 = tmp / "adapter-v2"
    shutil.copytree(trained.adapter_dir, adapter_v2)
    base_dir = Path(trained.base_model_dir)
    base_digest = base_manifest(base_dir, settings.cache_dir).digest

    def adapter(version: int, folder: Path) -> Adapter:
        return Adapter(
            name="tickets-lora",
            model="tickets-lora",
            version=version,
            artifact=folder.as_uri(),
            manifest_digest=_digest(folder),
            base_manifest_digest=base_digest,
            recipe_sha256=run.info().recipe_sha256,
        )

    def model(version: int, folder: Path, scheme: str, digest: str) -> RegisteredModel:
        return RegisteredModel(
            name="tickets",
            version=version,
            artifact=folder.as_uri(),
            manifest_digest=digest,
            quantization=Quantization(scheme=scheme, config_sha256="0" * 64),
            recipe_sha256=run.info().recipe_sha256,
            base_model=str(base_dir),
        )

    def pool(lora: Adapter, served: RegisteredModel) -> Pool:
        common = {"residency": "self_hosted", "gpus_per_replica": 0, "price_per_gpu_hour": 0.0}
        return Pool(
            deployments=[
                Deployment(
                    name="base",
                    model=BaseWeights(kind="base", source=str(base_dir), manifest_digest=base_digest),
                    replicas=args.replicas,
                    adapters=[lora],
                    **common,
                ),
                Deployment(name="tickets", model=served, replicas=args.replicas, **common),
            ]
        )

    v1 = pool(
        adapter(1, Path(trained.adapter_dir)),
        model(1, Path(quantized.model_dir), quantized.scheme, quantized.manifest_digest),
    )
    v2_adapter = pool(adapter(2, adapter_v2), v1.deployments[1].model)  # type: ignore[arg-type]
    v2_model = pool(
        adapter(2, adapter_v2), model(2, Path(trained.model_dir), "none", trained.manifest_digest)
    )
    from lifecycle.pool.load import parse_pool

    pool_file = tmp / "pool.yaml"
    pool_file.write_text(_yaml(v1))
    started = time.perf_counter()
    running = RunningPool(
        parse_pool(pool_file.read_text(), pool_file),
        launch=vllm_launch(settings.serve_python),
        artifacts=Artifacts(None, settings.cache_dir),
        workdir=tmp / "replicas",
        state_file=tmp / "serve" / "pool.json",
        say=lambda line: print(f"  {line}", flush=True),
    )
    print(f"pool up in {time.perf_counter() - started:.1f} s at {running.url}", flush=True)
    rows = []
    try:
        for label, desired in (
            ("adapter v1 -> v2 (hot-load in place)", v2_adapter),
            ("tickets W8A8/FP8 -> unquantized (blue-green)", v2_model),
            ("the same file again", v2_model),
        ):
            with (
                Clients(running.url, "tickets-lora", args.clients) as lora,
                Clients(running.url, "tickets", args.clients) as other,
            ):
                time.sleep(1.0)
                began = time.perf_counter()
                try:
                    done = running.runner.reconcile(desired)
                    per_action = "; ".join(f"{a.split(':')[0]} {s:.2f} s" for a, s in done.timings) or "-"
                except LifecycleError as exc:  # reverted: what served before still serves; say so and go on
                    per_action = f"FAILED AND REVERTED: {str(exc).splitlines()[0][:300]}"
                took = time.perf_counter() - began
            sent = lora.ok + len(lora.failed) + other.ok + len(other.failed)
            failed = len(lora.failed) + len(other.failed)
            rows.append((label, took, per_action, sent, failed, (lora.failed + other.failed)[:2]))
    finally:
        running.stop()
        if any("FAILED" in row[2] for row in rows):
            print(f"kept {tmp} (the failed replica's vLLM log is under replicas/)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f"{'change':46} {'apply->serving':>15} {'requests':>9} {'failed':>7}  actions")
    for label, took, per_action, sent, failed, examples in rows:
        print(f"{label:46} {took:>13.2f} s {sent:>9} {failed:>7}  {per_action}")
        for example in examples:
            print(f"    failed: {example}")
    sys.stdout.flush()


def _digest(folder: Path) -> str:
    from lifecycle import manifest

    return manifest.verify(folder).digest


def _yaml(pool: object) -> str:
    import json

    return json.dumps(pool.model_dump(mode="json"), indent=2)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
