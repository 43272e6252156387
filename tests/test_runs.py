"""Run ids and the order of runs: unique and sortable even when a sweep starts several in the same second."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from lifecycle.runs import RunDir, RunInfo, created_stamp, list_runs, new_run_id

NOON = dt.datetime(2025, 1, 31, 12, 0, 0, 250_000)


def test_run_id_is_recipe_timestamp_and_random_tail() -> None:
    run_id = new_run_id("demo-tickets", NOON)
    assert re.fullmatch(r"demo-tickets-20250131-120000-[0-9a-f]{6}", run_id)
    assert new_run_id("demo-tickets", NOON, token="00c0ff") == "demo-tickets-20250131-120000-00c0ff"


def test_run_ids_in_the_same_second_differ() -> None:
    # 20 draws of 24 random bits: a repeat has odds of about 1 in 90,000
    assert len({new_run_id("demo", NOON) for _ in range(20)}) == 20


def test_run_ids_sort_by_time_whatever_their_tails() -> None:
    times = [NOON + dt.timedelta(seconds=s) for s in (0, 1, 59, 3600, 86400 * 40)]
    ids = [
        new_run_id("demo", t, token=tail)
        for t, tail in zip(times, ["ffffff", "000000", "aaaaaa", "999999", "000000"], strict=True)
    ]
    assert sorted(ids) == ids


def test_created_keeps_microseconds() -> None:
    assert created_stamp(NOON) == "2025-01-31T12:00:00.250000"
    assert created_stamp(NOON.replace(microsecond=0)) == "2025-01-31T12:00:00.000000"


def _run(root: Path, run_id: str, created: str) -> None:
    RunDir(root / run_id).write_info(
        RunInfo(run_id=run_id, recipe_name="demo", recipe_sha256="0" * 64, created=created)
    )


def test_list_runs_newest_first_within_a_second_then_by_id(tmp_path: Path) -> None:
    same_second = [NOON.replace(microsecond=us) for us in (1, 500_000, 999_999)]
    _run(tmp_path, "demo-20250131-120000-cccccc", created_stamp(same_second[0]))
    _run(tmp_path, "demo-20250131-120000-aaaaaa", created_stamp(same_second[2]))
    _run(tmp_path, "demo-20250131-120000-bbbbbb", created_stamp(same_second[1]))
    _run(tmp_path, "demo-20250131-120000-tie-1", created_stamp(same_second[1]))
    _run(tmp_path, "demo-20250131-115959", "2025-01-31T11:59:59")  # a run from before microseconds
    _run(tmp_path, "demo-20250131-120000", "2025-01-31T12:00:00")  # the same second, older format
    (tmp_path / ".demo-20250131-120001-dddddd.tmp").mkdir()  # being prepared: not a run yet

    order = [run.path.name for run in list_runs(tmp_path)]
    assert order == [
        "demo-20250131-120000-aaaaaa",
        "demo-20250131-120000-tie-1",
        "demo-20250131-120000-bbbbbb",
        "demo-20250131-120000-cccccc",
        "demo-20250131-120000",
        "demo-20250131-115959",
    ]
