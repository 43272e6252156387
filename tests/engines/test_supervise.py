"""The watchdog and process supervision, on real process trees of `sleep`s: nothing survives a stop, the death
of the starting process (even by SIGKILL), or the command's own exit; a detached group survives its starter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from lifecycle import interrupt
from lifecycle.engines import supervise
from lifecycle.engines.supervise import GroupId, group_members, start_time

# A command that starts a grandchild and a child that ignores SIGTERM, then sleeps: the worst a group can be.
TREE = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    subprocess.Popen(["sleep", "600"])
    print("tree up", flush=True)
    time.sleep(float(sys.argv[1]))
    sys.exit(int(sys.argv[2]))
    """
)


def tree(seconds: float = 600, code: int = 0) -> list[str]:
    return [sys.executable, "-c", TREE, str(seconds), str(code)]


def wait_for(condition, timeout_s: float = 10) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def started(group: supervise.Supervised, log: Path) -> None:
    assert wait_for(lambda: "tree up" in log.read_text() and len(group.members()) >= 4), log.read_text()


def test_stop_empties_the_group_even_of_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        group = supervise.start(tree(), cwd=tmp_path, env=os.environ, grace_s=1, output=out)
    started(group, log)
    assert group.running() and group.pid in interrupt._groups
    members = group.members()

    began = time.monotonic()
    group.stop()

    assert group_members(group.pid) == [] and not any(start_time(pid) for pid in members)
    assert time.monotonic() - began < 1 + 3  # the grace, then SIGKILL
    assert "SIGTERM received: stopping python" in log.read_text()
    assert group.pid not in interrupt._groups and not group.running()
    group.stop()  # a second stop is harmless


def test_the_commands_exit_ends_the_group_and_gives_its_code(tmp_path: Path) -> None:
    with (tmp_path / "out.log").open("wb") as out:
        group = supervise.start(
            tree(seconds=0.5, code=3), cwd=tmp_path, env=os.environ, grace_s=1, output=out
        )
    assert group.wait() == 3
    assert group_members(group.pid) == []
    assert group.pid not in interrupt._groups


def test_a_command_killed_by_a_signal_exits_128_plus_the_signal(tmp_path: Path) -> None:
    group = supervise.start(["sh", "-c", "kill -KILL $$"], cwd=tmp_path, env=os.environ, grace_s=1)
    assert group.wait() == 128 + signal.SIGKILL


def _starter(tmp_path: Path, detached: bool) -> tuple[dict[str, int], subprocess.Popen[str]]:
    """Another process starts the tree and reports the group; the caller then ends that process."""
    script = textwrap.dedent(
        f"""
        import json, os, sys, time
        from pathlib import Path
        from lifecycle.engines import supervise
        log = open({str(tmp_path / "out.log")!r}, "wb")
        group = supervise.start({tree()!r}, cwd=Path({str(tmp_path)!r}), env=os.environ, grace_s=1,
                                output=log, detached={detached})
        while len(group.members()) < 4:
            time.sleep(0.05)
        print(json.dumps({{"pid": group.pid, "started": group.group_id.started}}), flush=True)
        time.sleep(600)
        """
    )
    starter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert starter.stdout is not None
    return json.loads(starter.stdout.readline() or "{}"), starter


def test_a_sigkilled_starter_takes_its_group_with_it(tmp_path: Path) -> None:
    found, starter = _starter(tmp_path, detached=False)
    assert found, "the starter did not start its group"
    members = group_members(found["pid"])
    starter.kill()  # SIGKILL: no atexit, no finally; only the watchdog can clean up
    starter.wait()

    assert wait_for(lambda: not group_members(found["pid"]), timeout_s=10), group_members(found["pid"])
    assert not any(start_time(pid) for pid in members)
    assert "parent process" in (tmp_path / "out.log").read_text()


def test_a_detached_group_outlives_its_starter_until_stopped(tmp_path: Path) -> None:
    found, starter = _starter(tmp_path, detached=True)
    group = GroupId(found["pid"], found["started"])
    try:
        starter.kill()
        starter.wait()
        time.sleep(1)  # several of the watchdog's polls
        assert group.alive() and len(group_members(group.pid)) >= 4
    finally:
        assert supervise.stop_detached(group, grace_s=1)
    assert not group.alive() and group_members(group.pid) == []
    assert supervise.stop_detached(group, grace_s=1)  # stopping a gone group is harmless


def test_a_killed_watchdog_still_stops_the_command(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG on the command: a watchdog SIGKILLed from outside still takes the command with it."""
    group = supervise.start(["sleep", "600"], cwd=tmp_path, env=os.environ, grace_s=1)
    assert wait_for(lambda: len(group.members()) == 2)
    (command,) = [pid for pid in group.members() if pid != group.pid]
    os.kill(group.pid, signal.SIGKILL)
    assert wait_for(lambda: start_time(command) is None)
    group.stop()


def test_a_reused_pid_is_not_taken_for_the_group() -> None:
    me = GroupId(os.getpid(), start_time(os.getpid()) or 0)
    stranger = GroupId(os.getpid(), me.started + 1)  # same pid, another process's start time
    assert me.ours() and me.alive()
    assert not stranger.ours() and not stranger.alive()
    assert supervise.stop_detached(stranger, grace_s=0)  # left alone: this test process still runs
