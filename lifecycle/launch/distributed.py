"""Multi-GPU and multi-node training from SkyPilot's environment, with the same worker command everywhere.

The task's `run:` is always `lifecycle worker train recipe.yaml`. On a node with several GPUs, or on several
nodes, the worker re-executes itself once under torchrun, which starts one process per GPU with RANK,
LOCAL_RANK, WORLD_SIZE and the rendezvous address set; trl/accelerate read those. SkyPilot tells each node
where it stands:

    SKYPILOT_NUM_NODES           nodes in the job
    SKYPILOT_NODE_RANK           this node's rank, 0 .. nodes-1
    SKYPILOT_NODE_IPS            the nodes' IPs, one per line, in rank order (the first is the rendezvous)
    SKYPILOT_NUM_GPUS_PER_NODE   GPUs on each node
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lifecycle.errors import LaunchError

NUM_NODES = "SKYPILOT_NUM_NODES"
NODE_RANK = "SKYPILOT_NODE_RANK"
NODE_IPS = "SKYPILOT_NODE_IPS"
GPUS_PER_NODE = "SKYPILOT_NUM_GPUS_PER_NODE"
MASTER_PORT = 29500
# Set by torchrun in every process it starts: their presence means "already relaunched" (no recursion).
_LAUNCHED_MARKERS = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")


@dataclass(frozen=True)
class Topology:
    nodes: int
    gpus_per_node: int
    node_rank: int
    master_addr: str

    @property
    def world_size(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)


def topology(env: Mapping[str, str]) -> Topology:
    """Read SkyPilot's variables; without them this is one process on one node."""
    ips = [ip.strip() for ip in env.get(NODE_IPS, "").splitlines() if ip.strip()]
    nodes = _int(env, NUM_NODES, default=len(ips) or 1)
    gpus = _int(env, GPUS_PER_NODE, default=0)
    rank = _int(env, NODE_RANK, default=0)
    if nodes < 1 or gpus < 0:
        raise LaunchError(f"impossible topology: {NUM_NODES}={nodes}, {GPUS_PER_NODE}={gpus}")
    if not 0 <= rank < nodes:
        raise LaunchError(f"{NODE_RANK}={rank} is outside 0..{nodes - 1}")
    if nodes > 1 and len(ips) != nodes:
        raise LaunchError(f"{NODE_IPS} lists {len(ips)} address(es) for {nodes} nodes")
    return Topology(
        nodes=nodes, gpus_per_node=gpus, node_rank=rank, master_addr=ips[0] if ips else "127.0.0.1"
    )


def distributed_launch_argv(
    env: Mapping[str, str],
    argv: Sequence[str],
    *,
    python: str = sys.executable,
    master_port: int = MASTER_PORT,
) -> list[str] | None:
    """The torchrun command that runs `argv` once per GPU of every node, or None to run it as it is.

    None when the world is one process (one node, at most one GPU) or when this process was already started
    by torchrun. `argv` is the worker's own command: either `[PYTHON, "-m", MODULE, *args]` (kept a module
    run) or any executable with its arguments (run with torchrun's --no-python).
    """
    if any(marker in env for marker in _LAUNCHED_MARKERS):
        return None
    topo = topology(env)
    if topo.world_size <= 1:
        return None
    if topo.nodes == 1:
        # one node: a local rendezvous on a free port, nothing to agree on with other hosts
        options = ["--standalone", f"--nproc-per-node={topo.gpus_per_node}"]
    else:
        options = [
            f"--nnodes={topo.nodes}",
            f"--nproc-per-node={max(topo.gpus_per_node, 1)}",
            f"--node-rank={topo.node_rank}",
            f"--master-addr={topo.master_addr}",
            f"--master-port={master_port}",
        ]
    if len(argv) >= 3 and argv[1] == "-m":
        return [argv[0], "-m", "torch.distributed.run", *options, "-m", *argv[2:]]
    return [python, "-m", "torch.distributed.run", *options, "--no-python", *argv]


def _int(env: Mapping[str, str], name: str, *, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"{name}={raw!r} is not a whole number") from None
