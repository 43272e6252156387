"""Render a gate verdict: markdown (run directory, promotion pull requests), a PNG chart, a rich table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.gate.decide import RuleResult, Verdict, margin_of

if TYPE_CHECKING:
    from rich.table import Table

COLUMNS = (
    "task", "metric", "rule", "n", "candidate", "baseline", "Δ", "CI", "p", "threshold", "can show", "margin needs",
    "result",
)  # fmt: skip
_NUMERIC = {"n", "candidate", "baseline", "Δ", "p", "can show", "margin needs"}
_RESULT = {"pass": "✅ pass", "fail": "❌ fail", "not_shown": "⚠️ not shown"}
_STYLE = {"pass": "green", "fail": "bold red", "not_shown": "yellow"}
_COLOR = {"pass": "#2e7d32", "fail": "#c62828", "not_shown": "#ef8f00"}


def headline(verdict: Verdict) -> str:
    """'Gate PASSED: 4 of 4 rules pass' or 'Gate FAILED: 2 of 4 rules pass (1 failed, 1 not shown)'."""
    total = len(verdict.rules)
    passed = sum(r.status == "pass" for r in verdict.rules)
    failed = sum(r.status == "fail" for r in verdict.rules)
    not_shown = sum(r.status == "not_shown" for r in verdict.rules)
    line = f"Gate {'PASSED' if verdict.passed else 'FAILED'}: {passed} of {total} rules pass"
    if failed or not_shown:
        line += f" ({failed} failed, {not_shown} not shown)"
    return line


def row_cells(rule: RuleResult) -> list[str]:
    """One table row, as text; shared by the markdown and terminal renderings."""
    metric = rule.metric if rule.higher_is_better else f"{rule.metric} (lower is better)"
    kind = rule.rule if rule.confidence is None else f"{rule.rule} @{rule.confidence:.0%}"
    baseline = f"{rule.baseline:.4f}" + (" (merged)" if rule.reference == "merged" else "")
    delta = f"{rule.delta:+.4f}"
    if rule.recovery is not None:
        delta += f" (ratio {rule.recovery:.4f})"
    ci = "—" if rule.ci_low is None or rule.ci_high is None else f"[{rule.ci_low:+.4f}, {rule.ci_high:+.4f}]"
    return [
        rule.task,
        metric,
        kind,
        str(rule.n),
        f"{rule.candidate:.4f}",
        baseline,
        delta,
        ci,
        _p(rule.p_value),
        _threshold(rule),
        "—" if rule.resolution is None else f"±{rule.resolution:.4f}",
        _needed(rule),
        _RESULT[rule.status],
    ]


def sizing(rule: RuleResult) -> str | None:
    """What the number of items allows for this rule, in a sentence; None for rules without an interval."""
    margin = margin_of(rule)
    if rule.resolution is None or margin is None or rule.confidence is None:
        return None
    level = f"{rule.confidence:.0%}"
    line = f"{rule.n} items can show a margin of {rule.resolution:.4f} or more at {level}"
    if rule.items_needed is not None:
        enough = "these are enough" if rule.items_needed <= rule.n else "more than there are"
        return f"{line}; the rule's margin {margin:.4f} needs {rule.items_needed} items ({enough})"
    if margin <= 0:
        return f"{line}; a margin of 0 cannot be shown by any number of items"
    return f"{line}; no item differs, so the spread that sizes the margin's need is unknown"


def render_markdown(verdict: Verdict) -> str:
    """The verdict as GitHub markdown: a headline, one table row per rule, then each rule's reason."""
    lines = [f"### {headline(verdict)}", ""]
    if verdict.rules:
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_md(c) for c in row_cells(r)) + " |" for r in verdict.rules]
        lines += [""]
        lines += [
            f"- **{_md(r.task)} / {_md(r.metric)} / {r.rule}**: {_md(r.reason)}" + _sentence(sizing(r))
            for r in verdict.rules
        ]
        lines += [""]
    lines += [f"> note: {_md(note)}" for note in verdict.notes]
    if verdict.notes:
        lines += [""]
    lines.append(
        "Δ: mean per-item improvement of the candidate (quantized) over the reference, paired by item; "
        "CI: percentile paired bootstrap (seed "
        f"{verdict.seed}); p: McNemar exact test (0/1 metrics, improve rules). "
        "can show: the smallest margin these items can show, the interval's half-width z·sd/√n (normal "
        "approximation, sd of the paired per-item deltas); margin needs: the items at which that half-width "
        "equals the rule's margin (min_delta or max_drop). "
        "'not shown' means the data cannot tell, and is not a pass."
    )
    return "\n".join(lines) + "\n"


def render_rich(verdict: Verdict) -> Table:
    """The verdict as a rich table for the terminal; notes go in the caption."""
    from rich.table import Table

    table = Table(
        title=headline(verdict),
        title_style="bold green" if verdict.passed else "bold red",
        caption="\n".join(verdict.notes) or None,
    )
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in _NUMERIC else "left")
    for rule in verdict.rules:
        table.add_row(*row_cells(rule), style=_STYLE[rule.status])
    return table


def render_png(verdict: Verdict, path: str | Path) -> Path:
    """Chart each rule's Δ with its CI and threshold, coloured by result. Returns the path written."""
    from matplotlib.figure import Figure  # Figure + Agg canvas: no pyplot, no global state.
    from matplotlib.lines import Line2D

    path = Path(path)
    rules = verdict.rules
    fig = Figure(figsize=(9, 1.6 + 0.45 * max(1, len(rules))), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(headline(verdict), color=_COLOR["pass" if verdict.passed else "fail"])
    if not rules:
        ax.text(0.5, 0.5, "no rules", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    for y, rule in enumerate(rules):
        color = _COLOR[rule.status]
        if rule.ci_low is not None and rule.ci_high is not None:
            err = [[max(0.0, rule.delta - rule.ci_low)], [max(0.0, rule.ci_high - rule.delta)]]
            ax.errorbar(rule.delta, y, xerr=err, fmt="o", color=color, capsize=4)
        else:
            ax.plot(rule.delta, y, "D", color=color)
        threshold = _threshold_in_delta(rule)
        if threshold is not None:
            ax.plot(threshold, y, "|", color="0.3", markersize=16, markeredgewidth=2)
    if rules:
        ax.axvline(0.0, color="0.6", linewidth=1, linestyle="--")
        ax.set_yticks(range(len(rules)), [f"{r.task} · {r.metric} · {r.rule}" for r in rules])
        ax.invert_yaxis()
        ax.set_xlabel("Δ: candidate over reference, per item (> 0 is better); bars: CI")
        handles = [Line2D([], [], color=c, marker="o", linestyle="", label=s) for s, c in _COLOR.items()]
        handles.append(
            Line2D([], [], color="0.3", marker="|", linestyle="", markersize=12, label="threshold")
        )
        ax.legend(handles=handles, loc="best", fontsize="small")
    fig.savefig(path, dpi=120)
    return path


def _threshold(rule: RuleResult) -> str:
    if rule.rule == "improve":
        return f"CI low > {rule.threshold:+.4f}"
    if rule.rule == "no_regress":
        return f"CI low ≥ {rule.threshold:+.4f}"
    return f"ratio ≥ {rule.threshold:.4f}"


def _threshold_in_delta(rule: RuleResult) -> float | None:
    if rule.rule != "quant_recovery":
        return rule.threshold
    if rule.recovery is None:
        return None
    # ratio = num / den >= r  <=>  num - den >= (r - 1) * den, where den is the merged score (or, for
    # lower-is-better metrics, the quantized one).
    den = rule.baseline if rule.higher_is_better else rule.candidate
    return (rule.threshold - 1.0) * den


def _needed(rule: RuleResult) -> str:
    if rule.items_needed is None:
        return "—"
    return f"{rule.items_needed} items"


def _sentence(text: str | None) -> str:
    return "" if text is None else f". {_md(text)[0].upper()}{_md(text)[1:]}."


def _p(p_value: float | None) -> str:
    if p_value is None:
        return "—"
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
