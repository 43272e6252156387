"""McNemar's exact test, the paired bootstrap and the resolution of n items: hand-computed values, determinism,
coverage."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy.stats import binomtest

from lifecycle.errors import GateError
from lifecycle.gate.stats import (
    Interval,
    detectable_margin,
    is_binary,
    items_needed,
    mcnemar_exact,
    mcnemar_p_value,
    paired_bootstrap,
    resolution,
    z_value,
)


def _pairs(b: int, c: int, both_right: int = 0, both_wrong: int = 0) -> tuple[list[float], list[float]]:
    """Candidate/baseline 0/1 scores with b items only the candidate got right and c only the baseline."""
    cand = [1.0] * b + [0.0] * c + [1.0] * both_right + [0.0] * both_wrong
    base = [0.0] * b + [1.0] * c + [1.0] * both_right + [0.0] * both_wrong
    return cand, base


# ----------------------------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        # 2 * P(X <= min) for X ~ Bin(b + c, 1/2), by hand:
        (5, 1, 2 * (1 + 6) / 64),  # (C(6,0) + C(6,1)) / 2^6, doubled = 0.21875
        (1, 5, 2 * (1 + 6) / 64),  # symmetric
        (10, 0, 2 / 1024),  # 2 * (1/2)^10
        (6, 0, 2 / 64),  # 0.03125
        (5, 0, 2 / 32),  # 0.0625: five wins of five is not significant at 5%
        (8, 2, 2 * (1 + 10 + 45) / 1024),  # 0.109375
        (3, 3, 1.0),  # 2 * 42/64 > 1: capped
        (1, 0, 1.0),  # 2 * 1/2
        (0, 0, 1.0),  # no discordant item: no evidence at all
    ],
)
def test_mcnemar_matches_hand_computation(b: int, c: int, expected: float) -> None:
    cand, base = _pairs(b, c, both_right=7, both_wrong=4)
    result = mcnemar_exact(cand, base)
    assert (result.b, result.c, result.n, result.discordant) == (b, c, b + c + 11, b + c)
    assert result.p_value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("b", range(0, 25, 3))
@pytest.mark.parametrize("c", range(0, 25, 4))
def test_mcnemar_p_value_agrees_with_scipy_binomtest(b: int, c: int) -> None:
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_p_value(b, c) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_ignores_concordant_items() -> None:
    few = mcnemar_exact(*_pairs(9, 2))
    many = mcnemar_exact(*_pairs(9, 2, both_right=500, both_wrong=300))
    assert few.p_value == many.p_value


def test_mcnemar_rejects_non_binary_scores() -> None:
    with pytest.raises(GateError, match="0/1"):
        mcnemar_exact([0.5, 1.0], [1.0, 0.0])
    with pytest.raises(GateError, match="non-negative"):
        mcnemar_p_value(-1, 2)


def test_is_binary() -> None:
    assert is_binary([0.0, 1.0, 1, 0])
    assert not is_binary([0.0, 1.0, 0.5])
    assert not is_binary([2.0])


# ----------------------------------------------------------------------------------------------- bootstrap


def _boot(
    cand: object, base: object, seed: int = 0, samples: int = 2000, confidence: float = 0.95
) -> Interval:
    return paired_bootstrap(cand, base, samples=samples, confidence=confidence, seed=seed)  # type: ignore[arg-type]


def test_bootstrap_golden_numbers() -> None:
    """Fixed data and seed give fixed numbers: a change here changes every stored gate verdict."""
    cand, base = _pairs(30, 12, both_right=120, both_wrong=38)
    interval = _boot(cand, base, seed=7)
    assert interval.mean_delta == pytest.approx(18 / 200)
    assert (interval.low, interval.high) == pytest.approx((0.025, 0.155))  # normal approx: [0.028, 0.152]
    assert (interval.n, interval.samples, interval.seed, interval.confidence) == (200, 2000, 7, 0.95)


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(1)
    cand, base = rng.random(300), rng.random(300)
    assert _boot(cand, base, seed=3) == _boot(cand, base, seed=3)
    assert _boot(cand, base, seed=3) != _boot(cand, base, seed=4)


def test_bootstrap_equals_naive_index_resampling() -> None:
    """The blocked, memory-bounded loop draws exactly the indices of one big draw (here: several blocks)."""
    rng = np.random.default_rng(2)
    n, samples = 5000, 1000
    cand, base = rng.random(n), rng.random(n)
    delta = cand - base
    idx = np.random.default_rng(11).integers(0, n, size=(samples, n))
    means = delta[idx].mean(axis=1)
    interval = _boot(cand, base, seed=11, samples=samples, confidence=0.9)
    assert (interval.low, interval.high) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])), abs=1e-12)


def test_identical_scores_give_a_zero_width_interval_at_zero() -> None:
    rng = np.random.default_rng(3)
    scores = (rng.random(200) < 0.8).astype(float)
    for seed in range(20):
        interval = _boot(scores, scores, seed=seed)
        assert (interval.mean_delta, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_constant_shift_gives_that_shift_exactly() -> None:
    interval = _boot([1.0] * 50, [0.0] * 50)
    assert (interval.mean_delta, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_interval_brackets_the_mean_and_widens_with_confidence() -> None:
    rng = np.random.default_rng(4)
    cand, base = (rng.random(400) < 0.7).astype(float), (rng.random(400) < 0.6).astype(float)
    narrow = _boot(cand, base, confidence=0.8)
    wide = _boot(cand, base, confidence=0.99)
    assert wide.low <= narrow.low <= narrow.mean_delta <= narrow.high <= wide.high
    assert wide.high - wide.low > narrow.high - narrow.low


def test_interval_shrinks_like_one_over_sqrt_n() -> None:
    rng = np.random.default_rng(5)
    widths = []
    for n in (400, 1600):
        cand, base = (rng.random(n) < 0.7).astype(float), (rng.random(n) < 0.7).astype(float)
        interval = _boot(cand, base)
        widths.append(interval.high - interval.low)
    assert widths[0] / widths[1] == pytest.approx(2.0, rel=0.2)


def test_bootstrap_coverage_is_close_to_nominal() -> None:
    """400 data sets with a known true delta of +0.05: the 90% interval should cover it ~90% of the time."""
    covered = 0
    trials = 400
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        base = (rng.random(200) < 0.70).astype(float)
        cand = (rng.random(200) < 0.75).astype(float)
        interval = _boot(cand, base, seed=seed, samples=500, confidence=0.9)
        covered += interval.low <= 0.05 <= interval.high
    # Monte Carlo sd of the rate is sqrt(0.9 * 0.1 / 400) = 0.015: allow about three of them.
    rate = covered / trials
    print(f"\nbootstrap 90% CI coverage over {trials} simulated data sets: {rate:.3f}")
    assert 0.85 <= rate <= 0.95


@pytest.mark.parametrize(
    ("cand", "base", "kwargs", "message"),
    [
        ([1.0, 0.0], [1.0], {}, "same items"),
        ([], [], {}, "no items"),
        ([1.0, math.nan], [1.0, 0.0], {}, "finite"),
        ([[1.0]], [[1.0]], {}, "flat"),
        ([1.0], [0.0], {"samples": 0}, "samples"),
        ([1.0], [0.0], {"confidence": 1.0}, "confidence"),
    ],
)
def test_bootstrap_rejects_bad_input(
    cand: object, base: object, kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(GateError, match=message):
        _boot(cand, base, **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- resolution


def test_z_value_is_the_two_sided_normal_quantile() -> None:
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_value(0.9) == pytest.approx(1.644854, abs=1e-6)
    assert z_value(0.99) == pytest.approx(2.575829, abs=1e-6)


@pytest.mark.parametrize(("sd", "n", "expected"), [(0.5, 100, 0.098), (0.5, 400, 0.049), (0.0, 7, 0.0)])
def test_detectable_margin_by_hand(sd: float, n: int, expected: float) -> None:
    # 1.96 * sd / sqrt(n), with z = 1.96 rounded: relative error 2e-5
    assert detectable_margin(sd, n, 0.95) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    ("sd", "margin", "expected"),
    [
        (0.5, 0.098, 100),  # exactly the by-hand case above, inverted
        (0.5, 0.0979, 101),  # a hair smaller margin needs one more item
        (0.3, 0.1, 35),  # (1.96 * 0.3 / 0.1)^2 = 34.57 -> 35
        (0.3, 0.05, 139),  # half the margin, four times the items: 138.3 -> 139
        (1e-6, 0.5, 1),  # never fewer than one item
        (0.0, 0.1, None),  # no item differs: no estimate of the need
        (0.3, 0.0, None),  # a zero margin is never shown
    ],
)
def test_items_needed_by_hand(sd: float, margin: float, expected: int | None) -> None:
    assert items_needed(sd, margin, 0.95) == expected


def test_items_needed_inverts_detectable_margin() -> None:
    for sd in (0.1, 0.37, 0.8):
        for margin in (0.02, 0.05, 0.1, 0.2):
            k = items_needed(sd, margin, 0.95)
            assert k is not None
            assert detectable_margin(sd, k, 0.95) <= margin + 1e-12
            assert k == 1 or detectable_margin(sd, k - 1, 0.95) > margin


def test_binary_spread_comes_from_the_discordant_items() -> None:
    """For 0/1 scores sd^2 = (b + c)/n - ((b - c)/n)^2: the items both models agree on only dilute."""
    b, c, n = 6, 14, 300
    cand, base = _pairs(b, c, both_right=180, both_wrong=n - b - c - 180)
    res = resolution(cand, base, confidence=0.95)
    sd = math.sqrt((b + c) / n - ((b - c) / n) ** 2)
    assert (res.n, res.confidence) == (n, 0.95)
    assert res.sd == pytest.approx(sd)
    assert res.half_width == pytest.approx(z_value(0.95) * sd / math.sqrt(n))
    assert res.items_for(0.1) == items_needed(sd, 0.1, 0.95)
    # the same disagreement among more agreeing items: a finer resolution
    wider = resolution(*_pairs(b, c, both_right=500), confidence=0.95)
    assert wider.half_width < res.half_width


def test_resolution_approximates_the_bootstrap_half_width() -> None:
    rng = np.random.default_rng(6)
    for n, p in ((300, 0.1), (1000, 0.3)):
        base = (rng.random(n) < 0.65).astype(float)
        cand = np.where(rng.random(n) < p, 1.0 - base, base)
        interval = _boot(cand, base, samples=4000)
        res = resolution(cand, base, confidence=0.95)
        assert res.half_width == pytest.approx((interval.high - interval.low) / 2, rel=0.1)


def test_resolution_of_identical_scores_is_zero() -> None:
    res = resolution([1.0, 0.0, 1.0], [1.0, 0.0, 1.0], confidence=0.95)
    assert (res.sd, res.half_width, res.items_for(0.1)) == (0.0, 0.0, None)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: z_value(1.0), "strictly between 0 and 1"),
        (lambda: detectable_margin(0.5, 0, 0.95), "at least one item"),
        (lambda: detectable_margin(-0.1, 10, 0.95), "non-negative"),
        (lambda: items_needed(float("nan"), 0.1, 0.95), "non-negative"),
        (lambda: resolution([1.0], [1.0, 0.0], confidence=0.95), "same items"),
        (lambda: resolution([], [], confidence=0.95), "no items"),
    ],
)
def test_resolution_input_errors(call: Any, message: str) -> None:
    with pytest.raises(GateError, match=message):
        call()
