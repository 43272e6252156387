"""The whole loop against real vLLM (CPU), as a team runs it: promote v1 (pull request branch, merged), serve the
pool behind the router (a routing policy beside the pool file), promote an adapter's next version and then a
quantization change, each merged and applied while clients send requests through the router all the while; every
request answered, the aliases moved only after the pool serves the new version, a vLLM server killed under load
costs no request (the route falls back), every request audited without its text, and Ctrl-C leaves no server
behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pool_world import QUESTION, Traffic
from registered_world import register_version

from lifecycle.registry.models import Registry
from lifecycle.registry.tracking import Tracker
from lifecycle.results import QuantizeResult, TrainResult
from lifecycle.route.audit import read_log
from lifecycle.route.policy import hash_key
from lifecycle.runs import RunDir
from lifecycle.serve.control import ServeState
from lifecycle.train.base import base_manifest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).parents[2]
# each client waits this long between requests: steady traffic through every change, without the test's own
# clients taking the cores a new server needs to start (on a 2-core host every vLLM server has one core)
PAUSE_S = 0.1
KEY = "sk-support-team"
ROUTING = f"""\
tenants:
  - name: support
    keys: [{hash_key(KEY)}]
    cost_classes: [pool]
    residency: self_hosted
routes:
  - name: tickets
    targets: [tickets]
  - name: tickets-lora
    targets: [tickets-lora]
  - name: tickets-or-base
    targets: [tickets, base]
health: {{interval_s: 1, timeout_s: 1, unhealthy_after: 1, healthy_after: 1}}
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle.cli.app", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"lifecycle {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def merge(work: Path, branch: str) -> str:
    """What merging the pull request does: main fast-forwards to the branch."""
    git(work, "merge", "-q", "--ff-only", branch)
    git(work, "push", "-q", "origin", "main")
    return git(work, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, lora_run: RunDir, api, serve_python: Path):  # type: ignore[no-untyped-def]
    """A store with tickets v1 (the quantized model), v2 (the merged one, unquantized) and tickets-lora v1, v2
    (the adapter), registered as the register stage does; a checkout whose pool serves the base weights."""
    root = tmp_path_factory.mktemp("pool-vllm")
    run = RunDir(root / "run")
    import shutil

    shutil.copytree(lora_run.path, run.path, ignore=shutil.ignore_patterns("engines"))
    quantized = api.quantize(run)
    trained = run.load("train", TrainResult)
    assert isinstance(quantized, QuantizeResult) and trained.adapter_dir
    home = root / "home"
    (home / "cache").parent.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(REPO / "mlruns" / "cache", target_is_directory=True)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    registry = Registry(Tracker(uri, home / "artifacts"))
    base_dir = Path(trained.base_model_dir)
    base_digest = base_manifest(base_dir, home / "cache").digest
    register_version(registry, "tickets", Path(quantized.model_dir), base_digest, scheme=quantized.scheme)
    register_version(registry, "tickets", Path(trained.model_dir), base_digest, scheme="none")
    for _ in (1, 2):
        register_version(registry, "tickets-lora", Path(trained.adapter_dir), base_digest, scheme="none")

    remote, work = root / "remote.git", root / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    git(work, "config", "user.name", "Test Person")
    git(work, "config", "user.email", "person@example.com")
    (work / "serving").mkdir()
    (work / "serving" / "pool.yaml").write_text(
        "deployments:\n"
        "  - name: base\n"
        "    model:\n"
        "      kind: base\n"
        f"      source: {base_dir}\n"
        f"      manifest_digest: {base_digest}\n"
        "    residency: self_hosted\n"
        "    gpus_per_replica: 0\n"
        "    price_per_gpu_hour: 0.0\n"
    )
    (work / "serving" / "routing.yaml").write_text(ROUTING)
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "serve the base weights")
    git(work, "remote", "add", "origin", str(remote))
    git(work, "push", "-q", "origin", "main")
    env = {
        **os.environ,
        "LIFECYCLE_HOME": str(home),
        "MLFLOW_TRACKING_URI": uri,
        "LIFECYCLE_SERVE_PYTHON": str(serve_python),
        "GITHUB_TOKEN": "",
    }
    return work, env, registry, home


def test_promote_serve_and_apply_with_clients_all_the_while(world) -> None:  # type: ignore[no-untyped-def]
    work, env, registry, home = world
    cli(env, work, "promote", "tickets", "1")
    merge(work, "promote/tickets-v1")
    cli(env, work, "promote", "tickets-lora", "1", "--deployment", "base")
    merge(work, "promote/tickets-lora-v1")

    server = subprocess.Popen(
        [sys.executable, "-m", "lifecycle.cli.app", "serve", "serving/pool.yaml", "--port", "0"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_as_foreground_job,
    )
    state_file = home / "serve" / "pool.json"
    try:
        deadline = time.monotonic() + 600
        while not state_file.exists():
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "the pool did not come up"
            time.sleep(1)
        state = ServeState.read(state_file)
        assert state is not None
        status = json.loads(cli(env, work, "serve", "--status", "--json").stdout)
        assert {d["name"]: d["serves"] for d in status["deployments"]} == {
            "base": f"base {status['pool']['deployments'][0]['model']['source']}",
            "tickets": f"tickets v1 ({registry.get('tickets', '1').tags['lifecycle.quant.scheme']})",
        }
        pids = _server_pids(state.pid)
        assert len(pids) >= 2

        # an adapter's next version: hot-loaded in place, no server started
        cli(env, work, "promote", "tickets-lora", "2", "--deployment", "base")
        commit = merge(work, "promote/tickets-lora-v2")
        with (
            Traffic(state.front_url, "tickets-lora", pause_s=PAUSE_S, key=KEY) as lora_traffic,
            Traffic(state.front_url, "tickets", pause_s=PAUSE_S, key=KEY) as other,
        ):
            applied = cli(env, work, "apply", "serving/pool.yaml", "--commit", commit, "--pr", "2").stdout
        assert lora_traffic.failures == [] and other.failures == []
        assert lora_traffic.answers and other.answers
        assert "hot-load adapter tickets-lora (tickets-lora v2) in place of v1" in applied
        assert registry.aliases("tickets-lora") == {"production": "2", "previous": "1", "candidate": "2"}
        assert registry.get("tickets-lora", "2").tags["lifecycle.deployed.commit"] == commit

        # a quantization change: new servers, checked, traffic shifted, old ones stopped
        cli(env, work, "promote", "tickets", "2")
        commit = merge(work, "promote/tickets-v2")
        with Traffic(state.front_url, "tickets", pause_s=PAUSE_S, key=KEY) as traffic:
            applied = cli(env, work, "apply", "serving/pool.yaml", "--commit", commit).stdout
        assert traffic.failures == [], traffic.failures[:3]
        assert "replace tickets blue-green" in applied
        assert registry.aliases("tickets")["production"] == "2"
        status = json.loads(cli(env, work, "serve", "--status", "--json").stdout)
        assert "tickets v2 (none)" in [d["serves"] for d in status["deployments"]]
        again = cli(env, work, "apply", "serving/pool.yaml").stdout
        assert "nothing to do" in again

        # a server killed under load: the route's next backend answers, nothing fails; the pool restarts it
        with Traffic(state.front_url, "tickets-or-base", pause_s=PAUSE_S, key=KEY) as fallback:
            os.kill(_vllm_pid(state.pid, "tickets"), signal.SIGKILL)
            deadline = time.monotonic() + 30
            while len(fallback.answers) < 20 and time.monotonic() < deadline:
                time.sleep(0.2)
        assert fallback.failures == [], fallback.failures[:3]
        assert len(fallback.answers) >= 20
        pids = _server_pids(state.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            out, _ = server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()  # its servers' watchdogs follow it
            raise
    assert server.returncode == 130, out
    time.sleep(1)
    assert [p for p in pids if Path(f"/proc/{p}").exists()] == []
    assert not state_file.exists()

    # every request through the router left one record: which version answered, where it fell back; never text
    audit = home / "router" / "audit.jsonl"
    logged = read_log(audit)
    assert logged.chain.ok, logged.chain.summary()
    records = [r.record for r in logged.records]
    assert {r.outcome for r in records} == {"ok"}
    served = {(r.route, r.model_name, r.model_version) for r in records}
    assert {("tickets", "tickets", 1), ("tickets", "tickets", 2)} <= served
    assert any(r.route == "tickets-or-base" and r.backend == "base" for r in records)
    assert QUESTION.encode() not in audit.read_bytes()


def _as_foreground_job() -> None:
    """As a shell starts a foreground job: SIGINT at its default. A test runner started as a script's background
    job has it ignored, an ignored signal is inherited, and `lifecycle serve` (rightly) keeps it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _server_pids(parent: int) -> list[int]:
    """Every process below `parent` (the watchdogs and the vLLM processes under them)."""
    found, frontier = [], [parent]
    while frontier:
        pid = frontier.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return found


def _vllm_pid(parent: int, served: str) -> int:
    """The vLLM API server process serving `served` below `parent`."""
    for pid in _server_pids(parent):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in argv and served.encode() in argv:
            i = argv.index(b"--served-model-name")
            if argv[i + 1] == served.encode():
                return pid
    raise AssertionError(f"no vLLM server for {served!r} under {parent}")
