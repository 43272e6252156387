"""Paired statistics for the gate: McNemar's exact test, a paired bootstrap CI, and how small a margin a number
of items can show. Pure functions, no I/O.

Both take per-item scores of the candidate and the baseline on the *same* items, in the same order. Pairing is
what makes a gate on a few hundred items usable: most items are right (or wrong) for both models, and only the
items where they differ carry information about the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binom, norm

from lifecycle.errors import GateError

Scores = Sequence[float] | NDArray[np.float64]
"""Per-item scores, in item order."""

# Largest number of resampled indices held in memory at once (rows x items): about 32 MB of int64.
_CHUNK_CELLS = 1 << 22


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired binary outcomes.

    b: items the candidate got right and the baseline wrong; c: the reverse. Under "no difference" each
    discordant item is a fair coin, so the two-sided p-value is an exact binomial tail of Bin(b + c, 1/2).
    """

    n: int
    b: int
    c: int
    p_value: float

    @property
    def discordant(self) -> int:
        return self.b + self.c


@dataclass(frozen=True)
class Interval:
    """Percentile paired-bootstrap confidence interval of mean(candidate - baseline)."""

    n: int
    mean_delta: float
    low: float
    high: float
    confidence: float
    samples: int
    seed: int


def is_binary(values: Scores) -> bool:
    """True when every score is exactly 0 or 1 (accuracy, exact match), the case McNemar's test applies to."""
    arr = np.asarray(values, dtype=np.float64)
    return bool(np.all((arr == 0.0) | (arr == 1.0)))


def mcnemar_exact(candidate: Scores, baseline: Scores) -> McNemar:
    """Exact two-sided McNemar test for paired 0/1 scores; p = 1 when no item is discordant."""
    cand, base = _paired_arrays(candidate, baseline)
    if not (is_binary(cand) and is_binary(base)):
        raise GateError("McNemar's test needs 0/1 per-item scores; got other values")
    b = int(np.sum((cand == 1.0) & (base == 0.0)))
    c = int(np.sum((cand == 0.0) & (base == 1.0)))
    return McNemar(n=int(cand.size), b=b, c=c, p_value=mcnemar_p_value(b, c))


def mcnemar_p_value(b: int, c: int) -> float:
    """Two-sided exact p-value: 2 * P(X <= min(b, c)) for X ~ Bin(b + c, 1/2), capped at 1."""
    if b < 0 or c < 0:
        raise GateError(f"discordant counts must be non-negative, got b={b}, c={c}")
    total = b + c
    if total == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), total, 0.5)))


def paired_bootstrap(
    candidate: Scores,
    baseline: Scores,
    *,
    samples: int,
    confidence: float,
    seed: int,
) -> Interval:
    """Two-sided percentile CI of mean(candidate - baseline), resampling items (pairs) with replacement.

    Deterministic for (scores, samples, seed). Items are resampled in blocks so memory stays bounded for
    large n; the block size depends only on n, so the result never depends on the machine.
    """
    cand, base = _paired_arrays(candidate, baseline)
    if samples < 1:
        raise GateError(f"bootstrap samples must be at least 1, got {samples}")
    if not 0.0 < confidence < 1.0:
        raise GateError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    delta = cand - base
    n = int(delta.size)
    means = _bootstrap_means(delta, samples, np.random.default_rng(seed))
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(
        n=n,
        mean_delta=float(delta.mean()),
        low=float(low),
        high=float(high),
        confidence=confidence,
        samples=samples,
        seed=seed,
    )


@dataclass(frozen=True)
class Resolution:
    """How small a difference a paired comparison on these items can show, and what a margin would need.

    Normal approximation of the paired bootstrap interval: its half-width is z * sd / sqrt(n), with sd the
    spread of the per-item deltas (population sd, as the bootstrap resamples the items themselves) and z the
    two-sided normal quantile of the confidence. For 0/1 scores sd^2 = d/n - mean^2, where d counts the
    discordant items (McNemar's b + c): disagreement, not the item count alone, sets the resolution.
    """

    n: int
    sd: float
    confidence: float
    half_width: float  # the smallest margin these n items can show

    def items_for(self, margin: float) -> int | None:
        """Items at which the half-width shrinks to `margin`; None when no number can (margin 0) or the
        observed spread is zero (no item differs, so the data say nothing about how many would)."""
        return items_needed(self.sd, margin, self.confidence)


def z_value(confidence: float) -> float:
    """The two-sided normal quantile: 1.96 at 95%."""
    if not 0.0 < confidence < 1.0:
        raise GateError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2.0))


def detectable_margin(sd: float, n: int, confidence: float) -> float:
    """Half-width z * sd / sqrt(n) of the interval of a mean delta: the smallest margin n items can show."""
    if n < 1:
        raise GateError(f"need at least one item, got {n}")
    if sd < 0 or not np.isfinite(sd):
        raise GateError(f"the spread of deltas must be a finite non-negative number, got {sd}")
    return z_value(confidence) * sd / float(np.sqrt(n))


def items_needed(sd: float, margin: float, confidence: float) -> int | None:
    """The fewest items whose half-width z * sd / sqrt(n) is at most `margin`: ceil((z * sd / margin)^2).
    None when the margin is not positive (no number of items shows a zero margin) or sd is 0."""
    if sd < 0 or not np.isfinite(sd):
        raise GateError(f"the spread of deltas must be a finite non-negative number, got {sd}")
    if margin <= 0 or sd == 0:
        return None
    # round away float noise before the ceiling: (1.96 * 0.5 / 0.098)^2 must be 100, not 101
    return max(1, int(np.ceil(round((z_value(confidence) * sd / margin) ** 2, 9))))


def resolution(candidate: Scores, baseline: Scores, *, confidence: float) -> Resolution:
    """The resolution of the paired comparison of `candidate` with `baseline` on these items."""
    cand, base = _paired_arrays(candidate, baseline)
    delta = cand - base
    sd = float(delta.std())
    n = int(delta.size)
    return Resolution(n=n, sd=sd, confidence=confidence, half_width=detectable_margin(sd, n, confidence))


def _bootstrap_means(
    delta: NDArray[np.float64], samples: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    n = delta.size
    if np.all(delta == delta[0]):
        # Every resample has the same mean; skip the work (and keep an identical candidate at exactly [d, d]).
        return np.full(samples, delta[0], dtype=np.float64)
    rows = max(1, _CHUNK_CELLS // n)
    means = np.empty(samples, dtype=np.float64)
    for start in range(0, samples, rows):
        stop = min(samples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = delta[idx].mean(axis=1)
    return means


def _paired_arrays(candidate: Scores, baseline: Scores) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    cand = np.asarray(candidate, dtype=np.float64)
    base = np.asarray(baseline, dtype=np.float64)
    if cand.ndim != 1 or base.ndim != 1:
        raise GateError("per-item scores must be flat sequences of numbers")
    if cand.size != base.size:
        raise GateError(f"paired scores need the same items: candidate has {cand.size}, baseline {base.size}")
    if cand.size == 0:
        raise GateError("no items to compare")
    if not (np.all(np.isfinite(cand)) and np.all(np.isfinite(base))):
        raise GateError("per-item scores must be finite numbers (found NaN or infinity)")
    return cand, base
