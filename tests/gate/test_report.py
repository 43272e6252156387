"""Rendering a verdict: markdown for pull requests, a PNG chart, a rich table."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from lifecycle.gate.decide import MetricScores, TaskScores, Verdict, decide
from lifecycle.gate.report import COLUMNS, headline, render_markdown, render_png, render_rich, sizing
from lifecycle.recipe.schema import GateSpec

N = 200


def _metric(cand: np.ndarray, base: np.ndarray, merged: np.ndarray | None = None) -> MetricScores:
    ids = [f"i{k}" for k in range(len(cand))]
    return MetricScores(
        candidate=dict(zip(ids, map(float, cand), strict=True)),
        baseline=dict(zip(ids, map(float, base), strict=True)),
        merged=None if merged is None else dict(zip(ids, map(float, merged), strict=True)),
    )


@pytest.fixture(scope="module")
def failed() -> Verdict:
    """One rule of each status, plus a recovery line, a continuous metric and a task name with a pipe."""
    rng = np.random.default_rng(0)
    base = (rng.random(N) < 0.7).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0.0)[:30]] = 1.0
    worse = base.copy()
    worse[np.flatnonzero(base == 1.0)[:40]] = 0.0
    f1 = rng.random(N)
    spec = GateSpec.model_validate(
        {
            "tasks": [
                {"task": "arc|easy", "rules": [{"kind": "improve", "metric": "acc"}]},
                {"task": "hellaswag", "rules": [{"kind": "no_regress", "metric": "acc", "max_drop": 0.05}]},
                {"task": "squad", "rules": [{"kind": "improve", "metric": "f1"}]},
            ]
        }
    )
    return decide(
        spec,
        [
            TaskScores(task="arc|easy", metrics={"acc": _metric(better, base, merged=better)}),
            TaskScores(task="hellaswag", metrics={"acc": _metric(worse, base)}),
            TaskScores(task="squad", metrics={"f1": _metric(f1, f1)}),
        ],
    )


@pytest.fixture(scope="module")
def passed() -> Verdict:
    base = (np.random.default_rng(1).random(N) < 0.7).astype(float)
    spec = GateSpec.model_validate(
        {"tasks": [{"task": "arc", "rules": [{"kind": "no_regress", "metric": "acc"}]}]}
    )
    return decide(spec, [TaskScores(task="arc", metrics={"acc": _metric(base, base, merged=base)})])


def test_fixture_covers_every_status(failed: Verdict) -> None:
    assert {r.status for r in failed.rules} == {"pass", "fail", "not_shown"}
    assert not failed.passed


def test_headline(failed: Verdict, passed: Verdict) -> None:
    assert headline(failed) == "Gate FAILED: 2 of 4 rules pass (1 failed, 1 not shown)"
    assert headline(passed) == "Gate PASSED: 2 of 2 rules pass"


def test_markdown_has_a_header_and_a_well_formed_row_per_rule(failed: Verdict) -> None:
    text = render_markdown(failed)
    lines = text.splitlines()
    assert lines[0] == "### Gate FAILED: 2 of 4 rules pass (1 failed, 1 not shown)"
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| task")]
    assert len(rows) == len(failed.rules)
    for row, rule in zip(rows, failed.rules, strict=True):
        cells = [c.strip() for c in row.replace("\\|", "\0").strip("|").split("|")]
        assert len(cells) == len(COLUMNS)
        assert cells[0].replace("\0", "|") == rule.task
        assert cells[1] == rule.metric
        assert cells[2].startswith(rule.rule)
        assert cells[3] == str(rule.n)
    assert "arc\\|easy" in text  # a pipe in a name must not break the table
    assert "✅ pass" in text and "❌ fail" in text and "⚠️ not shown" in text
    assert "(merged)" in text and "ratio 1.0000" in text
    for rule in failed.rules:
        assert rule.reason.replace("|", "\\|") in text
    for note in failed.notes:
        assert note in text


def test_markdown_of_a_passing_verdict(passed: Verdict) -> None:
    text = render_markdown(passed)
    assert text.startswith("### Gate PASSED")
    assert "| arc | acc | no_regress @95% | 200 |" in text
    assert "CI low ≥ -0.0200" in text


def test_markdown_of_an_empty_gate() -> None:
    text = render_markdown(Verdict(passed=True, rules=[], seed=0, notes=["the gate has no tasks"]))
    assert text.startswith("### Gate PASSED: 0 of 0 rules pass")
    assert "> note: the gate has no tasks" in text
    assert "| task |" not in text


@pytest.mark.parametrize("which", ["failed", "passed", "empty"])
def test_png_is_written(which: str, failed: Verdict, passed: Verdict, tmp_path: Path) -> None:
    verdict = {"failed": failed, "passed": passed, "empty": Verdict(passed=True, rules=[], seed=0)}[which]
    out = render_png(verdict, tmp_path / "gate.png")
    data = out.read_bytes()
    assert out == tmp_path / "gate.png"
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5000


def test_rich_table(failed: Verdict) -> None:
    table = render_rich(failed)
    assert len(table.columns) == len(COLUMNS)
    assert table.row_count == len(failed.rules)
    console = Console(record=True, width=240, file=io.StringIO())
    console.print(table)
    text = console.export_text()
    assert "Gate FAILED" in text
    assert "arc|easy" in text and "hellaswag" in text and "not shown" in text


def test_every_rule_states_its_resolution_and_what_its_margin_needs(failed: Verdict) -> None:
    text = render_markdown(failed)
    hold = next(r for r in failed.rules if r.rule == "no_regress")
    assert hold.resolution is not None and hold.items_needed is not None
    row = next(line for line in text.splitlines() if line.startswith("| hellaswag"))
    assert f"| ±{hold.resolution:.4f} | {hold.items_needed} items |" in row
    assert (
        f"{N} items can show a margin of {hold.resolution:.4f} or more at 95%; the rule's margin 0.0500 "
        f"needs {hold.items_needed} items"
    ) in text
    recovery = next(
        line for line in text.splitlines() if line.startswith("| arc\\|easy") and "merged" in line
    )
    assert "| — | — |" in recovery  # a ratio has no interval to size
    assert "smallest margin these items can show" in text and "z·sd/√n" in text


def test_sizing_sentences_for_every_case(failed: Verdict, passed: Verdict) -> None:
    by_kind = {(r.task, r.rule): r for r in failed.rules}
    assert sizing(by_kind[("arc|easy", "quant_recovery")]) is None
    # improve with the default min_delta of 0: no number of items shows a zero margin
    assert "a margin of 0 cannot be shown" in (sizing(by_kind[("arc|easy", "improve")]) or "")
    # identical scores: nothing differs, so the need cannot be estimated
    same = next(r for r in passed.rules if r.rule == "no_regress")
    assert same.resolution == 0.0 and "no item differs" in (sizing(same) or "")
    short = by_kind[("hellaswag", "no_regress")]  # 40 of 200 items flipped: a 0.05 margin needs more
    assert short.items_needed is not None and short.items_needed > short.n
    assert (sizing(short) or "").endswith(f"needs {short.items_needed} items (more than there are)")
    assert (sizing(short.model_copy(update={"n": 1000})) or "").endswith("items (these are enough)")
