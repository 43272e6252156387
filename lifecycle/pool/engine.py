"""A deployment's engine arguments as vLLM sees them: the `VllmSpec` the pool runner starts a replica from, and
the flags the pool file pins. Pure: used by `lifecycle serve` (local replicas), the SkyServe service files and
`lifecycle verify` (the rendered arguments shown on a pull request), so all three start the same server."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lifecycle.engines.vllm import VllmSpec
from lifecycle.pool.schema import Deployment, VllmArgs


def engine_flags(args: VllmArgs) -> list[str]:
    """The pinned flags beyond those `VllmSpec` renders itself (model, name, dtype, length, LoRA)."""
    flags: list[str] = []
    if args.max_num_seqs is not None:
        flags += ["--max-num-seqs", str(args.max_num_seqs)]
    if args.gpu_memory_utilization is not None:
        flags += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    if args.tensor_parallel_size != 1:
        flags += ["--tensor-parallel-size", str(args.tensor_parallel_size)]
    if args.structured_outputs_backend is not None:
        flags += ["--structured-outputs-config.backend", args.structured_outputs_backend]
    if args.tool_call_parser is not None:
        flags += ["--enable-auto-tool-choice", "--tool-call-parser", args.tool_call_parser]
    return flags + list(args.extra_args)


def replica_spec(deployment: Deployment, model_dir: Path, adapters: Mapping[str, Path]) -> VllmSpec:
    """How one replica of `deployment` starts: its weights in `model_dir` served under the deployment's name,
    its adapters (name -> folder) named at start so a restarted replica has them too. LoRA (with runtime
    updating, so later adapter versions are hot-loaded without a restart) is on where adapters can ride: a base
    deployment, one with adapters, or one that reserves adapter slots (`max_loras`)."""
    args = deployment.engine.args
    return VllmSpec(
        model_dir=model_dir,
        served_model_name=deployment.name,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        lora_modules=dict(adapters),
        max_lora_rank=args.max_lora_rank,
        max_loras=args.max_loras,
        runtime_lora=lora_capable(deployment),
        extra_args=tuple(engine_flags(args)),
    )


def lora_capable(deployment: Deployment) -> bool:
    """Whether its replicas start with LoRA on: adapters can be hot-loaded only onto those."""
    return (
        deployment.model.kind == "base"
        or bool(deployment.adapters)
        or deployment.engine.args.max_loras is not None
    )
