"""The gate's verdict: a pure function of the gate spec and per-item scores; no I/O, seeded, deterministic.

Every rule compares the served (quantized) candidate with the baseline item by item. A rule passes only when
the data *shows* what it asks for: a point estimate that looks right but whose confidence interval does not
clear the threshold is "not_shown", which is not a pass. A task's score is the mean of its per-item scores
(accuracy, exact match, per-item F1); corpus-level metrics such as BLEU cannot be paired by item.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from lifecycle.errors import GateError
from lifecycle.gate.stats import Interval, McNemar, is_binary, mcnemar_exact, paired_bootstrap, resolution
from lifecycle.recipe.schema import GateSpec, GateTask, ImproveRule, NoRegressRule
from lifecycle.results import RuleResult, Status, Verdict

# Float noise allowed in threshold comparisons (a mean of -0.05 may come out as -0.05000000000000002).
_EPS = 1e-9


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MetricScores(_Frozen):
    """One metric's per-item scores, keyed by item id; items are paired by id."""

    candidate: dict[str, float] = Field(description="The served candidate (quantized), per item id.")
    baseline: dict[str, float] = Field(description="The baseline (production or base model), per item id.")
    merged: dict[str, float] | None = Field(
        default=None,
        description="The unquantized (merged) candidate, per item id; enables the quant_recovery rule.",
    )
    higher_is_better: bool = Field(
        default=True, description="False for metrics where lower is better (e.g. an error rate)."
    )


class TaskScores(_Frozen):
    """All per-item scores of one lm-eval task."""

    task: str
    metrics: dict[str, MetricScores]


def decide(spec: GateSpec, scores: list[TaskScores]) -> Verdict:
    """Evaluate every rule of `spec` on `scores`. Raises GateError listing every input problem at once."""
    by_task, problems = _index(scores)
    problems += check_rules_against_metrics(spec, {t.task: set(t.metrics) for t in scores})
    if not problems:
        problems += [
            p for gate_task in spec.tasks for p in _pairing_problems(gate_task, by_task[gate_task.task])
        ]
    if problems:
        raise GateError("the gate cannot be evaluated:\n" + "\n".join(f"  {p}" for p in problems))

    results: list[RuleResult] = []
    notes: list[str] = []
    if not spec.tasks:
        notes.append("the gate has no tasks: nothing was checked")
    for name in sorted(set(by_task) - {t.task for t in spec.tasks}):
        notes.append(f"scores for task {name!r} were given but the gate has no rules for it")
    for gate_task in spec.tasks:
        task_scores = by_task[gate_task.task]
        seed = task_seed(spec.seed, gate_task.task)
        for rule in gate_task.rules:
            results.append(_rule_result(gate_task.task, rule, task_scores.metrics[rule.metric], spec, seed))
        for metric in _unique(rule.metric for rule in gate_task.rules):
            scores_m = task_scores.metrics[metric]
            if scores_m.merged is None:
                notes.append(
                    f"{gate_task.task}/{metric}: no merged (unquantized) scores; quant_recovery not checked"
                )
            else:
                results.append(
                    _recovery_result(
                        gate_task.task, metric, scores_m, scores_m.merged, spec.min_quant_recovery
                    )
                )
    return Verdict(passed=all(r.passed for r in results), rules=results, seed=spec.seed, notes=notes)


def check_rules_against_metrics(spec: GateSpec, available: dict[str, set[str]]) -> list[str]:
    """Problems with `spec` given the metrics each task produces: missing tasks or metrics, duplicates."""
    problems: list[str] = []
    seen: set[str] = set()
    for gate_task in spec.tasks:
        name = gate_task.task
        if name in seen:
            problems.append(
                f"task {name!r} appears more than once in the gate; merge its rules into one entry"
            )
            continue
        seen.add(name)
        if name not in available:
            problems.append(f"task {name!r}: no results for it{_suggest(name, available)}")
            continue
        metrics = available[name]
        for rule in gate_task.rules:
            if rule.metric not in metrics:
                produced = ", ".join(sorted(metrics)) or "nothing"
                problems.append(
                    f"task {name!r}: rule {rule.kind} names metric {rule.metric!r}, which the task does not "
                    f"produce (it produces: {produced}){_suggest(rule.metric, metrics)}"
                )
    return problems


def task_seed(seed: int, task: str) -> int:
    """A per-task bootstrap seed, stable across processes and Python versions (unlike hash())."""
    digest = hashlib.sha256(f"{seed}\x00{task}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# ----------------------------------------------------------------------------------------------- rules


def _rule_result(
    task: str, rule: ImproveRule | NoRegressRule, scores: MetricScores, spec: GateSpec, seed: int
) -> RuleResult:
    ids = sorted(scores.candidate)
    cand = np.array([scores.candidate[i] for i in ids])
    base = np.array([scores.baseline[i] for i in ids])
    sign = 1.0 if scores.higher_is_better else -1.0
    ci = paired_bootstrap(
        sign * cand, sign * base, samples=spec.bootstrap_samples, confidence=rule.confidence, seed=seed
    )
    mc = _oriented_mcnemar(cand, base, scores.higher_is_better)
    res = resolution(sign * cand, sign * base, confidence=rule.confidence)
    if isinstance(rule, ImproveRule):
        status, reason = _improve(rule, ci, mc)
        threshold, p_value, margin = rule.min_delta, None if mc is None else mc.p_value, rule.min_delta
    else:
        status, reason = _no_regress(rule, ci, mc)
        threshold, p_value, margin = -rule.max_drop, None, rule.max_drop
    return RuleResult(
        task=task,
        rule=rule.kind,
        metric=rule.metric,
        reference="baseline",
        higher_is_better=scores.higher_is_better,
        n=ci.n,
        candidate=float(cand.mean()),
        baseline=float(base.mean()),
        delta=ci.mean_delta,
        ci_low=ci.low,
        ci_high=ci.high,
        confidence=rule.confidence,
        p_value=p_value,
        wins=None if mc is None else mc.b,
        losses=None if mc is None else mc.c,
        threshold=threshold,
        resolution=res.half_width,
        items_needed=res.items_for(margin),
        status=status,
        reason=reason,
    )


def margin_of(rule: RuleResult) -> float | None:
    """The margin a rule's `items_needed` is for: min_delta (improve), max_drop (no_regress)."""
    if rule.rule == "improve":
        return rule.threshold
    if rule.rule == "no_regress":
        return -rule.threshold
    return None


def _improve(rule: ImproveRule, ci: Interval, mc: McNemar | None) -> tuple[Status, str]:
    x, level = rule.min_delta, f"{rule.confidence:.0%}"
    shown = f"Δ {ci.mean_delta:+.4f}, {level} CI [{ci.low:+.4f}, {ci.high:+.4f}]"
    if ci.mean_delta < x - _EPS:
        return "fail", f"{shown}: below the required improvement of +{x:.4f}{_counts(mc)}"
    if ci.low <= x + _EPS:
        return "not_shown", f"{shown} does not clear +{x:.4f}: an improvement within the noise{_counts(mc)}"
    if mc is not None:
        alpha = 1.0 - rule.confidence
        if mc.b <= mc.c or mc.p_value >= alpha:
            return "not_shown", (
                f"{shown} clears +{x:.4f}, but McNemar does not confirm it "
                f"(p={mc.p_value:.3g}, needs < {alpha:.3g}){_counts(mc)}"
            )
        return "pass", f"{shown} clears +{x:.4f}; McNemar p={mc.p_value:.3g}{_counts(mc)}"
    return "pass", f"{shown} clears +{x:.4f}"


def _no_regress(rule: NoRegressRule, ci: Interval, mc: McNemar | None) -> tuple[Status, str]:
    y, level = rule.max_drop, f"{rule.confidence:.0%}"
    shown = f"Δ {ci.mean_delta:+.4f}, {level} CI [{ci.low:+.4f}, {ci.high:+.4f}]"
    if ci.low >= -y - _EPS:
        return "pass", f"{shown}: any drop is within the allowed {y:.4f}{_counts(mc)}"
    if ci.mean_delta >= -y - _EPS:
        return "not_shown", (
            f"{shown} reaches below -{y:.4f}: too few items (or too much disagreement) to show that the drop "
            f"is within {y:.4f}{_counts(mc)}"
        )
    return "fail", f"{shown}: a drop larger than the allowed {y:.4f}{_counts(mc)}"


def _recovery_result(
    task: str, metric: str, scores: MetricScores, merged_scores: dict[str, float], min_recovery: float
) -> RuleResult:
    ids = sorted(scores.candidate)
    cand = float(np.mean([scores.candidate[i] for i in ids]))
    merged = float(np.mean([merged_scores[i] for i in ids]))
    # Oriented so that "num / den" is the fraction of the merged model's quality the quantized one keeps.
    num, den = (cand, merged) if scores.higher_is_better else (merged, cand)
    delta = num - den
    recovery: float | None = None
    if den > 0 and num >= 0:
        recovery = num / den
        ok = recovery >= min_recovery - _EPS
        ratio = "quantized/merged" if scores.higher_is_better else "merged/quantized (lower is better)"
        reason = f"recovery {ratio} = {recovery:.4f} ({'≥' if ok else '<'} {min_recovery:.4f})"
    else:
        # A ratio to a zero (or negative) score means nothing; judge by whether quantization lost anything.
        ok = delta >= -_EPS
        reason = (
            f"ratio undefined (merged {merged:.4f}, quantized {cand:.4f}): the quantized model is "
            f"{'not worse' if ok else 'worse'}"
        )
    return RuleResult(
        task=task,
        rule="quant_recovery",
        metric=metric,
        reference="merged",
        higher_is_better=scores.higher_is_better,
        n=len(ids),
        candidate=cand,
        baseline=merged,
        delta=delta,
        recovery=recovery,
        threshold=min_recovery,
        status="pass" if ok else "fail",
        reason=reason,
    )


# ----------------------------------------------------------------------------------------------- helpers


def _oriented_mcnemar(
    cand: NDArray[np.float64], base: NDArray[np.float64], higher_is_better: bool
) -> McNemar | None:
    if not (is_binary(cand) and is_binary(base)):
        return None
    mc = mcnemar_exact(cand, base)
    if higher_is_better:
        return mc
    return McNemar(n=mc.n, b=mc.c, c=mc.b, p_value=mc.p_value)


def _counts(mc: McNemar | None) -> str:
    if mc is None:
        return ""
    return f" (only candidate right on {mc.b} items, only baseline on {mc.c})"


def _index(scores: list[TaskScores]) -> tuple[dict[str, TaskScores], list[str]]:
    by_task: dict[str, TaskScores] = {}
    problems: list[str] = []
    for entry in scores:
        if entry.task in by_task:
            problems.append(f"task {entry.task!r}: scores given more than once")
        by_task[entry.task] = entry
    return by_task, problems


def _pairing_problems(gate_task: GateTask, scores: TaskScores) -> list[str]:
    problems: list[str] = []
    for metric in _unique(rule.metric for rule in gate_task.rules):
        m = scores.metrics[metric]
        where = f"task {gate_task.task!r} metric {metric!r}"
        if not m.candidate:
            problems.append(f"{where}: no items scored")
            continue
        problems += _id_mismatch(where, "candidate", m.candidate, "baseline", m.baseline)
        if m.merged is not None:
            problems += _id_mismatch(where, "candidate", m.candidate, "merged", m.merged)
    return problems


def _id_mismatch(where: str, a_name: str, a: dict[str, float], b_name: str, b: dict[str, float]) -> list[str]:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if not only_a and not only_b:
        return []
    parts = [
        f"{len(ids)} item ids only in {name} ({_sample(ids)})"
        for name, ids in ((a_name, only_a), (b_name, only_b))
        if ids
    ]
    return [f"{where}: {' and '.join(parts)}; items are paired by id, so both must score the same items"]


def _sample(ids: list[str], k: int = 3) -> str:
    shown = ", ".join(repr(i) for i in ids[:k])
    return shown + (", ..." if len(ids) > k else "")


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
