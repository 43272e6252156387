"""Paired statistics for the gate: McNemar's exact test and a paired bootstrap CI. Pure functions, no I/O.

Both take per-item scores of the candidate and the baseline on the *same* items, in the same order. Pairing is
what makes a gate on a few hundred items usable: most items are right (or wrong) for both models, and only the
items where they differ carry information about the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binom

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
