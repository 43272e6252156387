"""distributed_launch_argv: one process, one node of 8 GPUs, two nodes of 8, and the recursion guard."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.errors import LaunchError
from lifecycle.launch.distributed import distributed_launch_argv, topology

ROOT = Path(__file__).resolve().parents[2]
WORKER = ["/venv/bin/python", "-m", "lifecycle.cli.app", "worker", "train", "recipe.yaml"]


def sky_env(nodes: int, gpus: int, rank: int = 0) -> dict[str, str]:
    ips = [f"10.0.0.{i + 1}" for i in range(nodes)]
    return {
        "SKYPILOT_NUM_NODES": str(nodes),
        "SKYPILOT_NODE_RANK": str(rank),
        "SKYPILOT_NODE_IPS": "\n".join(ips),
        "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus),
    }


def test_no_skypilot_environment_runs_the_command_as_is() -> None:
    assert distributed_launch_argv({}, WORKER) is None


def test_one_node_one_gpu_runs_the_command_as_is() -> None:
    assert distributed_launch_argv(sky_env(1, 1), WORKER) is None


def test_one_node_eight_gpus_is_a_standalone_torchrun() -> None:
    argv = distributed_launch_argv(sky_env(1, 8), WORKER)
    assert argv == [
        "/venv/bin/python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=8",
        "-m",
        "lifecycle.cli.app",
        "worker",
        "train",
        "recipe.yaml",
    ]


@pytest.mark.parametrize("rank", [0, 1])
def test_two_nodes_of_eight_rendezvous_at_the_first_node(rank: int) -> None:
    argv = distributed_launch_argv(sky_env(2, 8, rank), WORKER, master_port=29500)
    assert argv == [
        "/venv/bin/python",
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=8",
        f"--node-rank={rank}",
        "--master-addr=10.0.0.1",
        "--master-port=29500",
        "-m",
        "lifecycle.cli.app",
        "worker",
        "train",
        "recipe.yaml",
    ]
    assert topology(sky_env(2, 8, rank)).world_size == 16


def test_a_plain_executable_runs_with_no_python() -> None:
    argv = distributed_launch_argv(
        sky_env(1, 2), ["lifecycle", "worker", "train", "recipe.yaml"], python="py"
    )
    assert argv == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--no-python",
        "lifecycle",
        "worker",
        "train",
        "recipe.yaml",
    ]


@pytest.mark.parametrize("marker", ["LOCAL_RANK", "TORCHELASTIC_RUN_ID"])
def test_a_process_started_by_torchrun_does_not_relaunch(marker: str) -> None:
    assert distributed_launch_argv({**sky_env(2, 8, 1), marker: "3"}, WORKER) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({**sky_env(2, 8), "SKYPILOT_NODE_RANK": "2"}, "outside 0..1"),
        ({**sky_env(2, 8), "SKYPILOT_NODE_IPS": "10.0.0.1"}, "lists 1 address(es) for 2 nodes"),
        ({**sky_env(1, 8), "SKYPILOT_NUM_GPUS_PER_NODE": "eight"}, "not a whole number"),
        ({**sky_env(1, 8), "SKYPILOT_NUM_NODES": "0"}, "impossible topology"),
    ],
)
def test_an_impossible_topology_is_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        distributed_launch_argv(env, WORKER)


RANK_CHECK = """\
import os, sys
from lifecycle.launch.distributed import distributed_launch_argv
again = distributed_launch_argv(os.environ, [sys.executable, "-m", "rankcheck", *sys.argv[1:]])
line = f"rank={os.environ['RANK']} world={os.environ['WORLD_SIZE']} again={again} args={sys.argv[1:]}"
sys.stdout.write(line + "\\n")  # one write: the two ranks share the pipe
sys.stdout.flush()
"""


def run_torchrun(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    argv = distributed_launch_argv(env, [sys.executable, "-m", "rankcheck", "worker", "train", "recipe.yaml"])
    assert argv is not None
    child_env = {**os.environ, **env, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        argv, env=child_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_torchrun_really_starts_one_worker_per_gpu(tmp_path: Path) -> None:
    """The argv on a real torchrun (CPU, gloo-free: only the launcher's environment is checked)."""
    (tmp_path / "rankcheck.py").write_text(RANK_CHECK)
    proc = run_torchrun(tmp_path, sky_env(1, 2))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = sorted(line for line in out.splitlines() if line.startswith("rank="))
    assert lines == [
        "rank=0 world=2 again=None args=['worker', 'train', 'recipe.yaml']",
        "rank=1 world=2 again=None args=['worker', 'train', 'recipe.yaml']",
    ]


def test_torchrun_two_nodes_rendezvous_at_node_zero(tmp_path: Path) -> None:
    """Two "nodes" on this machine (both IPs 127.0.0.1), one process each: ranks 0 and 1 of a world of 2."""
    (tmp_path / "rankcheck.py").write_text(RANK_CHECK)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    envs = [{**sky_env(2, 1, rank), "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1"} for rank in (0, 1)]
    procs = []
    for env in envs:
        argv = distributed_launch_argv(env, [sys.executable, "-m", "rankcheck"], master_port=port)
        assert argv is not None
        child_env = {
            **os.environ,
            **env,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                argv, env=child_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    ranks = sorted(
        line.split()[0] for out, _ in outs for line in out.splitlines() if line.startswith("rank=")
    )
    assert ranks == ["rank=0", "rank=1"]
