"""SIGINT, SIGTERM and SIGHUP stop `lifecycle train` through the real CLI: within seconds, no process left behind,
the newest committed checkpoint kept, the run marked interrupted (run directory and MLflow), and `--resume`
continues it. A second signal stops at once; a SIGKILLed CLI takes its training worker with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lifecycle.registry.tracking import Tracker

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "lifecycle")
STOP_S = 15  # from the signal to the CLI's exit, with its worker and servers gone
START_S = 300  # from the start to the first committed checkpoint: ~60 s on an idle 2-core machine


def _as_foreground_job() -> None:
    """A shell starts a foreground job with SIGINT and SIGHUP at their defaults; a test runner started as a
    script's background job (CI, a tool) has them ignored, and an ignored signal is inherited: undo that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class Cli:
    """`lifecycle ARGS` in a session of its own, as a shell starts a foreground job; output in a file."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.log = home / f"cli-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["LIFECYCLE_HOME"] = str(home)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [CLI, *args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_as_foreground_job,
            )
        self.groups = {self.proc.pid}  # every process group seen working for it

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, found: Callable[[], object], timeout: float = START_S) -> None:
        deadline = time.monotonic() + timeout
        while not found():
            assert self.proc.poll() is None, (
                f"the CLI exited ({self.proc.returncode}) before {what}:\n{self.output}"
            )
            assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s:\n{self.output}"
            self.groups |= {pgid for _, pgid, _ in ours(self.home)}
            time.sleep(0.2)
        self.groups |= {pgid for _, pgid, _ in ours(self.home)}

    def send(self, signum: int) -> float:
        """Signal it as a terminal would: Ctrl-C to the foreground process group, the others to the process."""
        if signum == signal.SIGINT:
            os.killpg(self.proc.pid, signum)
        else:
            os.kill(self.proc.pid, signum)
        return time.monotonic()

    def wait(self, since: float) -> tuple[int, float]:
        """The exit code, and the seconds from `since` until no process of the run is left."""
        try:
            code = self.proc.wait(timeout=STOP_S * 2)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the CLI still runs {STOP_S * 2} s after the signal:\n{self.output}")
        while survivors(self.home, self.groups) and time.monotonic() - since < STOP_S * 2:
            time.sleep(0.1)
        return code, time.monotonic() - since


def ours(home: Path) -> list[tuple[int, int, str]]:
    """(pid, process group, command line) of every live process started with this LIFECYCLE_HOME."""
    needle = f"LIFECYCLE_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if stat[0] != "Z" and needle in environ:
            found.append((int(entry.name), int(stat[2]), cmdline.strip()))
    return found


def survivors(home: Path, groups: set[int]) -> list[str]:
    """Live processes of this home, or of any process group seen working for the CLI."""
    left = {pid: cmd for pid, _, cmd in ours(home)}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] != "Z" and int(stat[2]) in groups:
                left.setdefault(int(entry.name), f"(process group {stat[2]})")
    return [f"{pid}: {cmd[:160]}" for pid, cmd in sorted(left.items())]


@pytest.fixture
def home(tmp_path: Path, tiny_base: Path) -> Iterator[Path]:
    """A private store; the base-model (and engine-probe) cache is the repo's, so nothing is rebuilt."""
    (tmp_path / "cache").symlink_to(REPO / "mlruns" / "cache", target_is_directory=True)
    yield tmp_path
    for pid, _, _ in ours(tmp_path):  # a failed test must not leave its training running
        os.kill(pid, signal.SIGKILL)


def train(home: Path, name: str, *more: str) -> Cli:
    return Cli(home, "train", "recipes/demo.yaml", "--set", f"name={name}", *more)


def run_cli_resume(home: Path, name: str) -> subprocess.CompletedProcess[str]:
    """`--resume` with settings no interrupted run was started with."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LIFECYCLE_HOME"] = str(home)
    argv = [CLI, "train", "recipes/demo.yaml", "--set", f"name={name}", "--resume"]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def run_dir(home: Path, name: str) -> Path | None:
    found = sorted((home / "runs").glob(f"{name}-*"))
    return found[-1] if found else None


def committed(home: Path, name: str) -> list[Path]:
    run = run_dir(home, name)
    return list(run.glob("train/checkpoints/checkpoint-*/COMMITTED")) if run else []


def metrics(home: Path, name: str) -> bool:
    """Whether the worker has logged its first training steps."""
    run = run_dir(home, name)
    return run is not None and (run / "train" / "metrics.jsonl").is_file()


def listed(home: Path, name: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [CLI, "runs", "--json"],
        cwd=REPO,
        env={**env, "LIFECYCLE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    return next(row for row in json.loads(result.stdout) if row["recipe"] == name)


def mlflow_status(home: Path, run: Path) -> str:
    mlflow_run = json.loads((run / "run.json").read_text())["mlflow_run_id"]
    return Tracker(f"sqlite:///{home / 'mlflow.db'}").get_run(mlflow_run).status


def assert_stopped(cli: Cli, since: float, signum: int) -> float:
    """Exit 128 + signum within STOP_S, one line and no traceback, no process left; returns the seconds taken."""
    code, took = cli.wait(since)
    output = cli.output
    assert code == 128 + signum, output
    assert "Traceback" not in output, output
    assert f"interrupted by {signal.Signals(signum).name}: run " in output, output
    assert not survivors(cli.home, cli.groups), survivors(cli.home, cli.groups)
    assert took < STOP_S, f"{took:.1f} s from the signal until every process was gone"
    return took


def assert_marked_interrupted(home: Path, name: str, signum: int, stage: str) -> dict[str, object]:
    run = run_dir(home, name)
    assert run is not None
    row = listed(home, name)
    assert row["status"] == "interrupted", row
    stopped = row["stopped"]
    assert isinstance(stopped, dict)
    assert stopped["signal"] == signal.Signals(signum).name and stopped["stage"] == stage, stopped
    assert mlflow_status(home, run) == "KILLED"
    return stopped


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_a_signal_stops_training_and_keeps_the_run(home: Path, signum: int) -> None:
    """SIGTERM takes the same path: test_sigterm_then_resume_continues_from_the_checkpoint."""
    name = f"sig-{signal.Signals(signum).name.lower()}"
    cli = train(home, name, "--set", "training.max_steps=400", "--set", "training.checkpoint_every=20")
    cli.wait_for("committed checkpoint", lambda: committed(home, name))
    took = assert_stopped(cli, cli.send(signum), signum)
    stopped = assert_marked_interrupted(home, name, signum, "train")
    assert isinstance(stopped["step"], int) and stopped["step"] >= 20
    assert f"kept at step {stopped['step']}; resume with: lifecycle train recipes/demo.yaml" in cli.output
    print(f"{signal.Signals(signum).name}: stopped in {took:.1f} s")


def test_sigterm_then_resume_continues_from_the_checkpoint(home: Path) -> None:
    """SIGTERM while training, --resume from the kept checkpoint, then Ctrl-C while vLLM serves the chain check."""
    name = "sig-resume"
    settings = ("--set", "training.max_steps=60", "--set", "training.checkpoint_every=20")
    cli = train(home, name, *settings)
    cli.wait_for("committed checkpoint", lambda: committed(home, name))
    took = assert_stopped(cli, cli.send(signal.SIGTERM), signal.SIGTERM)
    step = assert_marked_interrupted(home, name, signal.SIGTERM, "train")["step"]
    assert "--resume" in cli.output
    print(f"SIGTERM: stopped in {took:.1f} s")

    run = run_dir(home, name)
    assert run is not None
    # another sweep member (other --set values) must not be the one continued
    other = run_cli_resume(home, name)
    assert other.returncode == 2 and "unfinished runs with other settings" in other.stderr, other.stderr
    resumed = train(home, name, *settings, "--resume")  # the command the interrupted CLI printed
    resumed.wait_for("training result", lambda: (run / "results" / "train.json").is_file())
    assert json.loads((run / "results" / "train.json").read_text())["resumed_from_step"] == step
    assert not (run / "stopped.json").exists()
    assert listed(home, name)["status"] == "incomplete"  # running again

    def serving() -> bool:  # a vLLM server of the chain check with its engine process started
        procs = ours(home)
        servers = {pgid for _, pgid, cmd in procs if "vllm.entrypoints" in cmd and str(run) in cmd}
        return any(sum(1 for _, g, _ in procs if g == pgid) >= 3 for pgid in servers)

    resumed.wait_for("vLLM server", serving)
    took = assert_stopped(resumed, resumed.send(signal.SIGINT), signal.SIGINT)
    assert_marked_interrupted(home, name, signal.SIGINT, "chain")
    print(f"SIGINT while serving: stopped in {took:.1f} s")


def test_a_second_ctrl_c_stops_at_once(home: Path) -> None:
    """When the clean stop hangs (here: a frozen worker), a second Ctrl-C kills the children and exits."""
    name = "sig-twice"
    cli = train(home, name, "--set", "training.max_steps=400", "--set", "training.checkpoint_every=20")
    cli.wait_for("training", lambda: metrics(home, name))
    worker = next(pid for pid, _, cmd in ours(home) if "lifecycle worker train" in cmd)
    os.kill(worker, signal.SIGSTOP)  # deaf to the SIGTERM the first Ctrl-C sends it
    cli.send(signal.SIGINT)
    time.sleep(1)
    assert cli.proc.poll() is None, "the first Ctrl-C did not wait for the worker"
    code, took = cli.wait(cli.send(signal.SIGINT))
    assert code == 130, cli.output
    assert "SIGINT again" in cli.output and "Traceback" not in cli.output, cli.output
    assert not survivors(home, cli.groups), survivors(home, cli.groups)
    assert took < 5, f"{took:.1f} s from the second Ctrl-C until every process was gone"
    print(f"second SIGINT: stopped in {took:.1f} s")


def test_a_killed_cli_leaves_no_worker(home: Path) -> None:
    name = "sig-kill"
    cli = train(home, name, "--set", "training.max_steps=400", "--set", "training.checkpoint_every=20")
    cli.wait_for("training", lambda: metrics(home, name))
    code, took = cli.wait(cli.send(signal.SIGKILL))
    assert code == -signal.SIGKILL
    assert not survivors(home, cli.groups), survivors(home, cli.groups)
    assert took < STOP_S, f"{took:.1f} s from SIGKILL until the worker was gone"
    print(f"SIGKILL of the CLI: worker gone in {took:.1f} s")


def test_the_resume_command_continues_what_was_interrupted() -> None:
    from lifecycle.cli.app import resume_command

    cli = "/work/main/.venv/bin/lifecycle"
    assert resume_command([cli, "train", "r.yaml", "--set", "name=a b"]) == (
        "lifecycle train r.yaml --set 'name=a b' --resume"
    )
    assert resume_command([cli, "train", "r.yaml", "--resume"]) == "lifecycle train r.yaml --resume"
    assert resume_command([cli, "train", "r.yaml", "--run-dir=x"]) == "lifecycle train r.yaml --run-dir=x"
    assert resume_command([cli, "quantize", "latest"]) == "lifecycle quantize latest"


def test_a_server_leaves_sigterm_to_the_clis_handler() -> None:
    from lifecycle import interrupt
    from lifecycle.engines.supervise import raise_on_sigterm as _raise_on_sigterm

    before = {signum: signal.getsignal(signum) for signum in interrupt.SIGNALS}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
        interrupt.install()
        assert interrupt.installed()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # nohup keeps its meaning
        handler = signal.getsignal(signal.SIGTERM)
        _raise_on_sigterm()()  # install and undo: neither touches the CLI's handler
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
