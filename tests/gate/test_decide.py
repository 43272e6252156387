"""The gate's decision: every rule and status, input errors, determinism, and measured error rates."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import ValidationError
from scipy.stats import norm

from lifecycle.errors import GateError
from lifecycle.gate.decide import (
    MetricScores,
    RuleResult,
    TaskScores,
    Verdict,
    check_rules_against_metrics,
    decide,
    task_seed,
)
from lifecycle.recipe.schema import GateSpec

N = 200


def _spec(*tasks: dict[str, Any], **kwargs: Any) -> GateSpec:
    return GateSpec.model_validate({"tasks": list(tasks), **kwargs})


def _task(name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"task": name, "rules": list(rules)}


def improve(metric: str = "acc", **kwargs: Any) -> dict[str, Any]:
    return {"kind": "improve", "metric": metric, **kwargs}


def no_regress(metric: str = "acc", **kwargs: Any) -> dict[str, Any]:
    return {"kind": "no_regress", "metric": metric, **kwargs}


def _ids(n: int) -> list[str]:
    return [f"item-{k:05d}" for k in range(n)]


def _metric(
    cand: NDArray[np.float64] | list[float],
    base: NDArray[np.float64] | list[float],
    merged: NDArray[np.float64] | list[float] | None = None,
    higher_is_better: bool = True,
) -> MetricScores:
    ids = _ids(len(cand))
    return MetricScores(
        candidate=dict(zip(ids, map(float, cand), strict=True)),
        baseline=dict(zip(ids, map(float, base), strict=True)),
        merged=None if merged is None else dict(zip(ids, map(float, merged), strict=True)),
        higher_is_better=higher_is_better,
    )


def _scores(task: str = "arc", metric: str = "acc", **kwargs: Any) -> TaskScores:
    return TaskScores(task=task, metrics={metric: _metric(**kwargs)})


def _binary(seed: int, n: int = N, p: float = 0.8) -> NDArray[np.float64]:
    return (np.random.default_rng(seed).random(n) < p).astype(np.float64)


def _only(verdict: Verdict, kind: str = "improve") -> RuleResult:
    [result] = [r for r in verdict.rules if r.rule == kind]
    return result


# ----------------------------------------------------------------------------------------------- no_regress


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
@pytest.mark.parametrize("max_drop", [0.0, 0.02, 0.1])
def test_identical_candidate_passes_every_no_regress_rule(confidence: float, max_drop: float) -> None:
    spec_rule = no_regress(max_drop=max_drop, confidence=confidence)
    for seed in range(40):
        base = _binary(seed)
        cont = np.random.default_rng(seed).random(N)
        verdict = decide(
            _spec(_task("arc", spec_rule), _task("squad", no_regress("f1", max_drop=max_drop)), seed=seed),
            [_scores(cand=base, base=base, merged=base), _scores("squad", "f1", cand=cont, base=cont)],
        )
        assert verdict.passed, verdict.rules
        for result in verdict.rules:
            assert result.status == "pass"
            if result.rule == "no_regress":
                assert (result.delta, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0)


def test_planted_regression_fails() -> None:
    """The candidate loses 20% of the 200 items (40) that the baseline got right."""
    base = _binary(0)
    cand = base.copy()
    cand[np.flatnonzero(base == 1.0)[:40]] = 0.0
    verdict = decide(_spec(_task("arc", no_regress(max_drop=0.05))), [_scores(cand=cand, base=base)])
    result = _only(verdict, "no_regress")
    assert not verdict.passed
    assert result.status == "fail"
    assert result.delta == pytest.approx(-0.2)
    assert result.ci_high is not None and result.ci_high < -0.05
    assert (result.wins, result.losses) == (0, 40)
    assert "drop larger than" in result.reason


def test_small_regression_within_the_allowance_passes_with_enough_items() -> None:
    base = _binary(1, n=4000)
    cand = base.copy()
    cand[np.flatnonzero(base == 1.0)[:40]] = 0.0  # a 1% drop, allowed 3%
    verdict = decide(_spec(_task("arc", no_regress(max_drop=0.03))), [_scores(cand=cand, base=base)])
    assert verdict.passed
    assert _only(verdict, "no_regress").delta == pytest.approx(-0.01)


def test_no_regress_is_not_shown_when_the_estimate_is_fine_but_the_interval_too_wide() -> None:
    base = _binary(2, n=60)
    cand = base.copy()
    flip_down = np.flatnonzero(base == 1.0)[:6]
    flip_up = np.flatnonzero(base == 0.0)[:5]
    cand[flip_down], cand[flip_up] = 0.0, 1.0  # delta -1/60, but 11 of 60 items disagree
    verdict = decide(_spec(_task("arc", no_regress(max_drop=0.05))), [_scores(cand=cand, base=base)])
    result = _only(verdict, "no_regress")
    assert result.status == "not_shown"
    assert not verdict.passed
    assert "too few items" in result.reason


# ----------------------------------------------------------------------------------------------- improve


def test_tiny_improvement_is_not_shown() -> None:
    """+1 item of 200 is an improvement the noise could produce: not a pass."""
    base = _binary(3)
    cand = base.copy()
    cand[np.flatnonzero(base == 0.0)[0]] = 1.0
    verdict = decide(_spec(_task("arc", improve(), no_regress())), [_scores(cand=cand, base=base)])
    result = _only(verdict, "improve")
    assert result.status == "not_shown"
    assert result.delta == pytest.approx(1 / N)
    assert (result.wins, result.losses, result.p_value) == (1, 0, 1.0)
    assert _only(verdict, "no_regress").status == "pass"
    assert not verdict.passed


def test_large_improvement_passes() -> None:
    base = _binary(4)
    cand = base.copy()
    cand[np.flatnonzero(base == 0.0)[:25]] = 1.0
    cand[np.flatnonzero(base == 1.0)[:3]] = 0.0
    verdict = decide(_spec(_task("arc", improve(min_delta=0.02))), [_scores(cand=cand, base=base)])
    result = _only(verdict, "improve")
    assert verdict.passed
    assert result.status == "pass"
    assert result.delta == pytest.approx(22 / N)
    assert result.ci_low is not None and result.ci_low > 0.02
    assert result.p_value is not None and result.p_value < 0.05
    assert (result.wins, result.losses) == (25, 3)


def test_improvement_that_the_bootstrap_clears_but_mcnemar_does_not_confirm_is_not_shown() -> None:
    """5 wins, 0 losses: every resample likely keeps a win, but 5/5 heads has p = 1/16 > 0.05."""
    base = _binary(5)
    cand = base.copy()
    cand[np.flatnonzero(base == 0.0)[:5]] = 1.0
    result = _only(decide(_spec(_task("arc", improve())), [_scores(cand=cand, base=base)]))
    assert result.ci_low is not None and result.ci_low > 0
    assert result.p_value == pytest.approx(1 / 16)
    assert result.status == "not_shown"
    assert "McNemar" in result.reason


def test_improvement_below_min_delta_but_real_is_not_shown() -> None:
    base = _binary(6)
    cand = base.copy()
    cand[np.flatnonzero(base == 0.0)[:12]] = 1.0  # +0.06 against a required +0.05
    result = _only(decide(_spec(_task("arc", improve(min_delta=0.05))), [_scores(cand=cand, base=base)]))
    assert result.delta == pytest.approx(0.06)
    assert result.status == "not_shown"


def test_worse_candidate_fails_an_improve_rule() -> None:
    base = _binary(7)
    cand = base.copy()
    cand[np.flatnonzero(base == 1.0)[:4]] = 0.0
    result = _only(decide(_spec(_task("arc", improve())), [_scores(cand=cand, base=base)]))
    assert result.status == "fail"


def test_identical_candidate_does_not_pass_an_improve_rule() -> None:
    base = _binary(8)
    result = _only(decide(_spec(_task("arc", improve())), [_scores(cand=base, base=base)]))
    assert result.status == "not_shown"


def test_continuous_metric_uses_the_bootstrap_alone() -> None:
    rng = np.random.default_rng(9)
    base = rng.random(N)
    cand = np.clip(base + 0.1 + rng.normal(0, 0.02, N), 0, None)
    result = _only(
        decide(_spec(_task("squad", improve("f1"))), [_scores("squad", "f1", cand=cand, base=base)])
    )
    assert result.status == "pass"
    assert (result.p_value, result.wins, result.losses) == (None, None, None)


def test_lower_is_better_metrics_are_oriented() -> None:
    """For an error rate, a candidate with fewer errors improves: delta is positive."""
    base = _binary(10, p=0.3)  # 1 = an error
    cand = base.copy()
    cand[np.flatnonzero(base == 1.0)[:30]] = 0.0
    scores = _scores("arc", "err", cand=cand, base=base, higher_is_better=False)
    verdict = decide(_spec(_task("arc", improve("err"), no_regress("err"))), [scores])
    result = _only(verdict)
    assert verdict.passed
    assert result.delta == pytest.approx(30 / N)
    assert result.candidate < result.baseline
    assert (result.wins, result.losses) == (30, 0)


# ----------------------------------------------------------------------------------------------- recovery


@pytest.mark.parametrize(("lost", "status"), [(0, "pass"), (1, "pass"), (2, "fail"), (20, "fail")])
def test_quant_recovery(lost: int, status: str) -> None:
    """The merged model gets 160 of 200 right; the quantized one `lost` fewer. 0.99 allows 1.6 items."""
    merged = np.zeros(N)
    merged[:160] = 1.0
    cand = merged.copy()
    cand[:lost] = 0.0
    verdict = decide(
        _spec(_task("arc", no_regress(max_drop=0.5)), min_quant_recovery=0.99),
        [_scores(cand=cand, base=merged, merged=merged)],
    )
    result = _only(verdict, "quant_recovery")
    assert result.recovery == pytest.approx((160 - lost) / 160)
    assert result.status == status
    assert result.reference == "merged"
    assert verdict.passed == (status == "pass")


@pytest.mark.parametrize(("cand_value", "status"), [(0.0, "pass"), (1.0, "pass")])
def test_quant_recovery_with_a_zero_merged_score_is_judged_by_comparison(
    cand_value: float, status: str
) -> None:
    merged = np.zeros(N)
    cand = np.full(N, cand_value)
    result = _only(
        decide(_spec(_task("arc", no_regress(max_drop=1.0))), [_scores(cand=cand, base=cand, merged=merged)]),
        "quant_recovery",
    )
    assert result.recovery is None
    assert result.status == status
    assert "undefined" in result.reason


def test_quant_recovery_for_a_lower_is_better_metric() -> None:
    merged = np.zeros(N)
    merged[:20] = 1.0  # 10% errors unquantized
    cand = merged.copy()
    cand[20:30] = 1.0  # 15% quantized: keeps 2/3 of the quality
    result = _only(
        decide(
            _spec(_task("arc", no_regress("err", max_drop=1.0))),
            [_scores("arc", "err", cand=cand, base=cand, merged=merged, higher_is_better=False)],
        ),
        "quant_recovery",
    )
    assert result.recovery == pytest.approx(0.1 / 0.15)
    assert result.status == "fail"


def test_quant_recovery_is_one_line_per_metric_and_skipped_without_merged_scores() -> None:
    base = _binary(11)
    spec = _spec(_task("arc", improve(), no_regress()), _task("hs", no_regress()))
    verdict = decide(spec, [_scores(cand=base, base=base, merged=base), _scores("hs", cand=base, base=base)])
    assert [(r.task, r.rule) for r in verdict.rules] == [
        ("arc", "improve"),
        ("arc", "no_regress"),
        ("arc", "quant_recovery"),
        ("hs", "no_regress"),
    ]
    assert any("hs/acc" in note and "quant_recovery not checked" in note for note in verdict.notes)


# ----------------------------------------------------------------------------------------------- input errors


def test_missing_metric_is_reported_with_a_suggestion() -> None:
    spec = _spec(
        _task("arc", no_regress("acc_norm"), improve("acc")), _task("gsm8k", no_regress("exact_match"))
    )
    problems = check_rules_against_metrics(spec, {"arc": {"acc", "acc_nrom"}, "gsm8k_cot": {"exact_match"}})
    assert len(problems) == 2
    assert (
        "'acc_norm'" in problems[0]
        and "acc, acc_nrom" in problems[0]
        and "did you mean 'acc_nrom'" in problems[0]
    )
    assert "'gsm8k'" in problems[1] and "did you mean 'gsm8k_cot'" in problems[1]
    assert check_rules_against_metrics(spec, {"arc": {"acc", "acc_norm"}, "gsm8k": {"exact_match"}}) == []


def test_decide_raises_on_a_missing_metric() -> None:
    base = _binary(12)
    with pytest.raises(GateError, match="acc_norm.*does not produce"):
        decide(_spec(_task("arc", no_regress("acc_norm"))), [_scores(cand=base, base=base)])


def test_duplicate_tasks_are_problems() -> None:
    spec = _spec(_task("arc", no_regress()), _task("arc", improve()))
    assert any("more than once" in p for p in check_rules_against_metrics(spec, {"arc": {"acc"}}))
    base = _binary(13)
    with pytest.raises(GateError, match="scores given more than once"):
        decide(
            _spec(_task("arc", no_regress())), [_scores(cand=base, base=base), _scores(cand=base, base=base)]
        )


def test_unpaired_ids_raise_with_the_ids_named() -> None:
    ids = _ids(5)
    scores = TaskScores(
        task="arc",
        metrics={
            "acc": MetricScores(candidate={i: 1.0 for i in ids}, baseline={i: 1.0 for i in ids[:3] + ["x"]})
        },
    )
    with pytest.raises(GateError) as raised:
        decide(_spec(_task("arc", no_regress())), [scores])
    message = str(raised.value)
    assert "2 item ids only in candidate ('item-00003', 'item-00004')" in message
    assert "1 item ids only in baseline ('x')" in message


def test_unpaired_merged_ids_raise() -> None:
    ids = _ids(4)
    same = {i: 1.0 for i in ids}
    scores = TaskScores(
        task="arc",
        metrics={"acc": MetricScores(candidate=same, baseline=same, merged={i: 1.0 for i in ids[:2]})},
    )
    with pytest.raises(GateError, match="only in candidate"):
        decide(_spec(_task("arc", no_regress())), [scores])


def test_empty_scores_raise() -> None:
    scores = TaskScores(task="arc", metrics={"acc": MetricScores(candidate={}, baseline={})})
    with pytest.raises(GateError, match="no items"):
        decide(_spec(_task("arc", no_regress())), [scores])


def test_nan_scores_are_rejected_at_load() -> None:
    with pytest.raises(ValidationError):
        MetricScores(candidate={"a": float("nan")}, baseline={"a": 1.0})


def test_every_problem_is_reported_at_once() -> None:
    base = _binary(14)
    spec = _spec(_task("arc", no_regress("nope")), _task("missing", no_regress()))
    with pytest.raises(GateError) as raised:
        decide(spec, [_scores(cand=base, base=base)])
    assert "'nope'" in str(raised.value) and "'missing'" in str(raised.value)


# ----------------------------------------------------------------------------------------------- verdict


def test_empty_gate_passes_with_a_note_and_extra_scores_are_noted() -> None:
    base = _binary(15)
    verdict = decide(_spec(), [_scores(cand=base, base=base)])
    assert verdict.passed and verdict.rules == []
    assert any("nothing was checked" in n for n in verdict.notes)
    assert any("'arc'" in n and "no rules" in n for n in verdict.notes)


def test_decision_is_deterministic_and_independent_of_item_order() -> None:
    rng = np.random.default_rng(16)
    base, cand = rng.random(N), rng.random(N)
    spec = _spec(_task("squad", no_regress("f1"), improve("f1")), seed=5)
    forward = _scores("squad", "f1", cand=cand, base=base)
    metric = forward.metrics["f1"]
    backward = TaskScores(
        task="squad",
        metrics={
            "f1": MetricScores(
                candidate=dict(reversed(metric.candidate.items())),
                baseline=dict(reversed(metric.baseline.items())),
            )
        },
    )
    assert decide(spec, [forward]) == decide(spec, [forward]) == decide(spec, [backward])
    other_seed = decide(spec.model_copy(update={"seed": 6}), [forward])
    assert other_seed.rules[0].ci_low != decide(spec, [forward]).rules[0].ci_low


def test_task_seed_is_stable() -> None:
    """Golden values: sha256-derived, so the same in every process (Python's hash() is salted)."""
    assert task_seed(0, "arc_easy") == task_seed(0, "arc_easy")
    assert task_seed(0, "arc_easy") != task_seed(1, "arc_easy") != task_seed(0, "arc_challenge")
    assert task_seed(0, "arc_easy") == 8777567278698407081


def test_scores_and_verdict_round_trip_through_json() -> None:
    base = _binary(17)
    scores = _scores(cand=base, base=base, merged=base)
    assert TaskScores.model_validate_json(scores.model_dump_json()) == scores
    verdict = decide(_spec(_task("arc", improve(), no_regress())), [scores])
    assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict
    with pytest.raises(ValidationError):
        verdict.passed = True


# ----------------------------------------------------------------------------------------------- error rates


def _no_regress_outcomes(
    n: int, p: float, max_drop: float, seeds: int, true_drop: float = 0.0, samples: int = 2000
) -> dict[str, float]:
    """Simulate independent per-item correctness (candidate p - true_drop, baseline p) and run the gate."""
    counts = {"pass": 0, "fail": 0, "not_shown": 0}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        base = (rng.random(n) < p).astype(np.float64)
        cand = (rng.random(n) < p - true_drop).astype(np.float64)
        spec = _spec(
            _task("sim", no_regress(max_drop=max_drop, confidence=0.95)), seed=seed, bootstrap_samples=samples
        )
        counts[_only(decide(spec, [_scores("sim", cand=cand, base=base)]), "no_regress").status] += 1
    return {status: count / seeds for status, count in counts.items()}


def test_false_fail_rate_of_no_regress_on_200_independent_items() -> None:
    """Candidate and baseline each right with p = 0.8, independently, on 200 items; max_drop 0.05 at 95%.

    The candidate is as good as the baseline, yet it seldom passes: independent errors make per-item deltas
    noisy (sd of the mean delta = sqrt(2 * 0.8 * 0.2 / 200) = 0.04), so the CI's lower bound sits about
    1.96 * 0.04 = 0.078 below the estimate, more than the 0.05 allowed. Normal theory predicts a non-pass rate
    of Phi((0.078 - 0.05) / 0.04) = 0.76. The rule is doing its job (see the false-pass test below); 200
    independent items cannot show "within 0.05". Mostly "not_shown" (cannot tell), rarely "fail".
    """
    se = np.sqrt(2 * 0.8 * 0.2 / 200)
    predicted = float(norm.cdf((norm.ppf(0.975) * se - 0.05) / se))
    rates = _no_regress_outcomes(n=200, p=0.8, max_drop=0.05, seeds=200)
    false_fail = 1.0 - rates["pass"]
    print(
        f"\nno_regress false-fail, n=200 independent: {false_fail:.3f} (predicted {predicted:.3f}; "
        f"status fail {rates['fail']:.3f}, not_shown {rates['not_shown']:.3f})"
    )
    # Monte Carlo sd with 200 seeds is 0.03; allow 0.1 for that and the normal approximation.
    assert abs(false_fail - predicted) < 0.1
    assert rates["fail"] < 0.2  # a "fail" needs the point estimate below -0.05: Phi(-1.25) = 0.11


def test_false_fail_rate_of_no_regress_is_small_with_enough_items() -> None:
    """The same candidate on 1500 items: se = 0.0146, predicted false-fail Phi((0.0286 - 0.05)/0.0146) = 0.07.

    Bound 0.12: the prediction plus 2.5 Monte Carlo sd (0.018 with 200 seeds).
    """
    rates = _no_regress_outcomes(n=1500, p=0.8, max_drop=0.05, seeds=200, samples=1000)
    false_fail = 1.0 - rates["pass"]
    print(f"\nno_regress false-fail, n=1500 independent: {false_fail:.3f} (predicted 0.071)")
    assert false_fail <= 0.12


def test_false_pass_rate_of_no_regress_at_the_allowed_drop_is_bounded() -> None:
    """A candidate truly 0.05 worse must pass at most (1 - 0.95) / 2 = 2.5% of the time (+ MC slack)."""
    rates = _no_regress_outcomes(n=200, p=0.8, max_drop=0.05, seeds=400, true_drop=0.05)
    print(f"\nno_regress false-pass at a true drop of max_drop, n=200: {rates['pass']:.3f} (nominal 0.025)")
    # Monte Carlo sd with 400 seeds is 0.008: allow about three.
    assert rates["pass"] <= 0.05


# ----------------------------------------------------------------------------------------------- resolution


def test_each_rule_states_the_margin_its_items_can_show_and_what_its_own_margin_needs() -> None:
    """The not-shown case above: 11 of 60 items disagree, so the interval is about ±0.11 wide and a 0.05
    margin needs 282 items, almost five times as many; the verdict itself is unchanged by the sizing."""
    base = _binary(2, n=60)
    cand = base.copy()
    cand[np.flatnonzero(base == 1.0)[:6]], cand[np.flatnonzero(base == 0.0)[:5]] = 0.0, 1.0
    verdict = decide(
        _spec(_task("arc", no_regress(max_drop=0.05), improve(min_delta=0.02, confidence=0.9))),
        [_scores(cand=cand, base=base, merged=cand)],
    )
    sd = np.sqrt(11 / 60 - (1 / 60) ** 2)
    hold, gain = _only(verdict, "no_regress"), _only(verdict, "improve")
    assert hold.status == "not_shown" and gain.status == "fail"
    assert hold.resolution == pytest.approx(norm.ppf(0.975) * sd / np.sqrt(60))
    assert hold.items_needed == int(np.ceil((norm.ppf(0.975) * sd / 0.05) ** 2)) == 282
    assert gain.resolution == pytest.approx(norm.ppf(0.95) * sd / np.sqrt(60))  # the rule's own confidence
    assert gain.items_needed == int(np.ceil((norm.ppf(0.95) * sd / 0.02) ** 2))
    recovery = _only(verdict, "quant_recovery")
    assert (recovery.resolution, recovery.items_needed) == (None, None)


def test_sizing_is_the_same_for_lower_is_better_metrics() -> None:
    base = _binary(10, p=0.3)
    cand = base.copy()
    cand[np.flatnonzero(base == 1.0)[:30]] = 0.0
    higher = decide(_spec(_task("arc", no_regress("err"))), [_scores("arc", "err", cand=cand, base=base)])
    lower = decide(
        _spec(_task("arc", no_regress("err"))),
        [_scores("arc", "err", cand=cand, base=base, higher_is_better=False)],
    )
    assert _only(higher, "no_regress").resolution == pytest.approx(_only(lower, "no_regress").resolution)
    assert _only(higher, "no_regress").items_needed == _only(lower, "no_regress").items_needed


def test_zero_margins_and_identical_scores_have_no_item_count() -> None:
    base = _binary(3)
    same = decide(_spec(_task("arc", no_regress(max_drop=0.1))), [_scores(cand=base, base=base)])
    assert (_only(same, "no_regress").resolution, _only(same, "no_regress").items_needed) == (0.0, None)
    cand = base.copy()
    cand[np.flatnonzero(base == 0.0)[:10]] = 1.0
    zero = decide(_spec(_task("arc", improve(min_delta=0.0))), [_scores(cand=cand, base=base)])
    assert (_only(zero).resolution or 0.0) > 0
    assert _only(zero).items_needed is None
