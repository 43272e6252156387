"""Several processes opening one fresh sqlite MLflow store at the same moment (a sweep, a CI matrix).

Without a lock, MLflow's schema set-up races: alembic's "Online migration expected to match one row", sqlite's
"duplicate column name", a second default experiment, or a second experiment of the same name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifecycle.registry.tracking import Tracker

pytestmark = pytest.mark.slow  # ~25-60 s on 2 cores: four processes import MLflow, then race three times

PROCESSES = 4
ROUNDS = 3  # a fresh store per round; the workers stay up, so each round is a race between warm processes

# One worker per process. Each round has two steps, each released at once for all workers by a start file:
#   open the round's fresh store and start a run in experiment "sweep" (the schema set-up race), then
#   start a run in a new experiment "sweep-again" of that store (the experiment creation race).
# Prints one JSON line per step.
WORKER = """
import json, sys, time
from pathlib import Path
from lifecycle.registry.tracking import Tracker
import mlflow.store.tracking.sqlalchemy_store, mlflow.store.model_registry.sqlalchemy_store, alembic.command

root, worker, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])

def step(name, fn):
    (root / f"ready-{name}-{worker}").touch()
    while not (root / f"start-{name}").exists():
        time.sleep(0.002)
    try:
        out = {"step": name, "run_id": fn()}
    except Exception as exc:
        out = {"step": name, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"}
    print(json.dumps(out), flush=True)

for r in range(rounds):
    db = root / f"round-{r}" / "mlflow.db"
    trackers = []

    def first():
        trackers.append(Tracker(f"sqlite:///{db}", db.parent / "artifacts"))
        return trackers[0].start_run("sweep", f"worker-{worker}", {"worker": worker})

    step(f"{r}-open", first)
    step(f"{r}-again", lambda: trackers[0].start_run("sweep-again", f"worker-{worker}", {"worker": worker}))
"""


def test_processes_opening_a_fresh_store_at_once_all_start_their_runs(tmp_path: Path) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), str(i), str(ROUNDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    steps = [f"{r}-{kind}" for r in range(ROUNDS) for kind in ("open", "again")]
    for name in steps:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready-{name}-{i}").exists() for i in range(PROCESSES)):
            assert time.monotonic() < deadline, "workers did not get ready"
            assert all(w.poll() is None for w in workers), "a worker exited early"
            time.sleep(0.01)
        (tmp_path / f"start-{name}").touch()
    results = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        results += [json.loads(line) for line in out.splitlines()]

    errors = [f"{res['step']}: {res['error']}" for res in results if "error" in res]
    assert not errors, f"{len(errors)} of {len(results)} steps failed:\n" + "\n".join(errors)
    for r in range(ROUNDS):
        tracker = Tracker(f"sqlite:///{tmp_path / f'round-{r}' / 'mlflow.db'}")
        assert sorted(e.name for e in tracker.client.search_experiments()) == [
            "Default",
            "sweep",
            "sweep-again",
        ]
        for kind in ("open", "again"):
            run_ids = {res["run_id"] for res in results if res["step"] == f"{r}-{kind}"}
            assert len(run_ids) == PROCESSES
            records = [tracker.get_run(run_id) for run_id in run_ids]
            assert {rec.status for rec in records} == {"RUNNING"}
            assert sorted(rec.tags["worker"] for rec in records) == [str(i) for i in range(PROCESSES)]
