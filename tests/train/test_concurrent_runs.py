"""prepare() in a sweep: several runs of one recipe started at once each get their own id, folder and MLflow run,
and a prepare that fails leaves neither a half-written folder nor an MLflow run stuck in RUNNING."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifecycle.registry.tracking import Tracker
from lifecycle.runs import RunDir, RunInfo, list_runs, new_run_id
from lifecycle.train import stage as train_stage

REPO = Path(__file__).parents[2]
PROCESSES = 3
SECOND = dt.datetime(2025, 1, 31, 12, 0, 0)

# Every worker draws the very same first run id (one second, one random tail), as a sweep could by bad luck,
# so the claim of the run folder is what keeps them apart. Prints the prepared run's folder.
WORKER = """
import datetime as dt, sys, time
from pathlib import Path
from lifecycle import runs
from lifecycle.recipe.load import load_recipe
from lifecycle.registry.tracking import Tracker
from lifecycle.train import stage

home, worker, repo = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
second = dt.datetime.fromisoformat(sys.argv[4])
drawn = []

def same_first_id(name, now=None):
    drawn.append(name)
    return runs.new_run_id(name, second, token="000000" if len(drawn) == 1 else None)

stage.new_run_id = same_first_id
loaded = load_recipe(repo / "recipes" / "demo.yaml", ["name=sweep"])
(home / f"ready-{worker}").touch()
while not (home / "start").exists():
    time.sleep(0.002)
tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")
print(stage.prepare(loaded, home / "runs", tracker, repo).path)
"""


@pytest.mark.slow  # 15-35 s on 2 cores, mostly three processes importing MLflow
def test_runs_prepared_at_once_get_their_own_folder_and_mlflow_run(tmp_path: Path) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), str(i), str(REPO), SECOND.isoformat()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(PROCESSES)):
        assert time.monotonic() < deadline, "workers did not get ready"
        for w in workers:
            assert w.poll() is None, f"a worker exited early: {w.communicate()[1]}"
        time.sleep(0.01)
    (tmp_path / "start").touch()  # a fresh store too: its set-up races as well
    paths = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        paths.append(Path(out.strip().splitlines()[-1]))

    runs = list_runs(tmp_path / "runs")
    assert sorted(r.path for r in runs) == sorted(paths)
    infos = [r.info() for r in runs]
    assert len({i.run_id for i in infos}) == PROCESSES
    assert all(i.run_id.startswith("sweep-20250131-120000-") for i in infos)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(i.run_id for i in infos)  # no .tmp

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    records = [tracker.get_run(i.mlflow_run_id or "") for i in infos]
    assert len({rec.run_id for rec in records}) == PROCESSES
    assert sorted(rec.name for rec in records) == sorted(i.run_id for i in infos)
    assert [rec.tags["lifecycle.run_dir"] for rec in records] == [str(r.path.resolve()) for r in runs]
    assert {rec.status for rec in records} == {"RUNNING"}  # prepared; training ends them


def test_an_id_taken_by_an_earlier_run_is_skipped(
    prepared_run, lifecycle_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = new_run_id("taken", SECOND, token="000000")
    earlier = RunInfo(
        run_id=taken, recipe_name="taken", recipe_sha256="0" * 64, created="2025-01-31T12:00:00"
    )
    RunDir(lifecycle_home / "runs" / taken).write_info(earlier)
    drawn: list[str] = []

    def same_first_id(name: str, now: dt.datetime | None = None) -> str:
        drawn.append(name)
        return new_run_id(name, SECOND, token="000000" if len(drawn) == 1 else None)

    monkeypatch.setattr(train_stage, "new_run_id", same_first_id)
    run = prepared_run("taken", [])
    assert len(drawn) == 2 and run.info().run_id != taken
    assert RunDir(lifecycle_home / "runs" / taken).info() == earlier


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom")


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("an MLflow run was started for a prepare that had already failed")


@pytest.mark.parametrize(
    ("target", "error", "status"),
    [
        ("lifecycle.train.stage.library_versions", RuntimeError, "FAILED"),  # logging the run's inputs
        ("lifecycle.registry.tracking.Tracker.log_artifact", KeyboardInterrupt, "KILLED"),  # Ctrl-C
        ("lifecycle.runs.RunDir.write_info", RuntimeError, "FAILED"),  # the last step before the rename
    ],
)
def test_a_prepare_that_fails_ends_its_mlflow_run_and_leaves_no_folder(
    prepared_run,
    lifecycle_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    error: type[BaseException],
    status: str,
) -> None:
    name = f"fails-{target.rsplit('.', 1)[-1].replace('_', '-')}"
    started: list[str] = []
    start_run = Tracker.start_run

    def recording(self: Tracker, experiment: str, run_name: str, tags: dict[str, str]) -> str:
        started.append(start_run(self, experiment, run_name, tags))
        return started[-1]

    monkeypatch.setattr(Tracker, "start_run", recording)
    monkeypatch.setattr(target, _boom if error is RuntimeError else _interrupt)
    with pytest.raises(error):
        prepared_run(name, [])

    assert len(started) == 1
    tracker = Tracker(f"sqlite:///{lifecycle_home / 'mlflow.db'}")
    assert tracker.get_run(started[0]).status == status
    assert not [p.name for p in (lifecycle_home / "runs").iterdir() if name in p.name]


def test_a_prepare_that_fails_before_its_mlflow_run_leaves_no_folder(
    prepared_run, lifecycle_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_stage, "_write_run_recipe", _boom)
    monkeypatch.setattr(Tracker, "start_run", _never)
    with pytest.raises(RuntimeError):
        prepared_run("fails-early", [])
    assert not [p.name for p in (lifecycle_home / "runs").iterdir() if "fails-early" in p.name]
