"""Paired, Holm-corrected comparisons of arms across seeds.

Every arm is trained once per seed and seed s of arm A shares initialisation and data order with seed s
of arm B, so we work on the per-seed paired differences d_s = 100 * (acc_A(s) - acc_B(s)) in points.
Pairing removes the seed-to-seed variance the two arms share, which is most of it.

Method, and why:
* Interval: Student t on the mean of d, df = n - 1. With 3-5 seeds a bootstrap has too few distinct
  resamples to be trusted and a normal interval is far too narrow; the t interval is exact if d is
  normal and has close to nominal coverage for mild departures.
* p-value: two-sided one-sample t-test of H0: mean d = 0 (the test dual to the interval).
* Multiplicity: the report makes several comparisons (each distilled arm vs `none` and vs `control`),
  and comparisons sharing a reference are dependent. Two corrections, each for what it is good at:
  - p-values (H0: Δ = 0) are Holm-adjusted (step-down; controls the family-wise error rate under any
    dependence, and rejects at least whatever Bonferroni rejects);
  - intervals are simultaneous: each at level 1 - alpha/m (Bonferroni), so with probability >= 1 - alpha
    every interval covers its true Δ at once. Verdicts compare these bounds with min_effect, so a claim
    such as "helped by more than δ" holds family-wise. (Holm-stepped intervals, 1 - alpha/(m - i), are
    narrower but only justify "Δ != 0", not a bound against δ.) A simultaneous interval that excludes 0
    always comes with p_holm <= alpha; the converse can fail, and then the verdict follows the interval.
* Scope: the interval is conditional on the fixed test split. It captures seed variance (initialisation
  and data order), not the sampling of test images, so it says how reliably the training recipe
  reproduces the gap on this test set, not how the gap would generalise to new images.
* With one seed there is no variance estimate and no interval: low = -inf, high = +inf, p = 1.0 and the
  verdict is "needs ≥ 2 seeds".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _st


@dataclass(frozen=True)
class Comparison:
    arm: str
    reference: str
    diff: float  # points: mean of per-seed paired differences
    low: float  # simultaneous CI (level below), points
    high: float
    level: float  # per-interval confidence level: 1 - alpha/m
    p_value: float  # raw two-sided t-test p
    p_holm: float  # Holm-adjusted p
    n_seeds: int
    verdict: str

    def as_dict(self) -> dict:
        # JSON has no infinity; None reads as "no bound"
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def paired_differences(acc_a: dict[int, float], acc_b: dict[int, float]) -> np.ndarray:
    """100 * (a - b) over the seeds both arms have, sorted by seed; unmatched seeds carry no pairing."""
    common = sorted(set(acc_a) & set(acc_b))
    if not common:
        raise ValueError(f"no seed in common: {sorted(acc_a)} vs {sorted(acc_b)}")
    return np.array([100.0 * (acc_a[s] - acc_b[s]) for s in common], dtype=np.float64)


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the t interval; infinite bounds when n < 2 (no variance estimate)."""
    d = np.asarray(d, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no differences")
    mean = float(d.mean())
    if d.size < 2:
        return mean, -math.inf, math.inf
    half = float(_st.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return mean, mean - half, mean + half


def t_test_p(d: np.ndarray) -> float:
    d = np.asarray(d, dtype=np.float64)
    if d.size < 2:
        return 1.0
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:  # t is 0/0 or ±inf; scipy would return nan
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (sd / math.sqrt(d.size))
    return float(min(1.0, 2 * _st.t.sf(abs(t), d.size - 1)))


def holm_adjust(p_values: list[float]) -> list[float]:
    m = len(p_values)
    out, running = [0.0] * m, 0.0
    for i, j in enumerate(sorted(range(m), key=lambda k: p_values[k])):  # stable: ties keep input order
        running = max(running, min(1.0, (m - i) * p_values[j]))  # max keeps it monotone in step-down order
        out[j] = running
    return out


def simultaneous_level(m: int, alpha: float = 0.05) -> float:
    """Bonferroni: m intervals at this level each cover their true values together with probability >= 1 - alpha."""
    return 1 - alpha / max(m, 1)


def verdict_for(low: float, high: float, min_effect: float) -> str:
    δ = min_effect
    if not (math.isfinite(low) and math.isfinite(high)):  # first: ±inf would otherwise read "inconclusive"
        return "needs ≥ 2 seeds"
    if low > δ:
        return f"helped by more than {δ:g} points"
    if 0 < low:
        return f"helped (gain may be under {δ:g} points)"
    if high < -δ:
        return f"hurt by more than {δ:g} points"
    if high < 0:
        return f"hurt (loss may be under {δ:g} points)"
    if -δ <= low and high <= δ:
        return f"no effect larger than {δ:g} points"
    return "inconclusive"


def compare_arms(per_seed_acc: dict[str, dict[int, float]], pairs: list[tuple[str, str]], min_effect: float,
                 alpha: float = 0.05) -> list[Comparison]:
    """One Comparison per (arm, reference) pair whose arms both exist; those pairs form the Holm family."""
    kept = [(a, r) for a, r in pairs if a in per_seed_acc and r in per_seed_acc]
    diffs = [paired_differences(per_seed_acc[a], per_seed_acc[r]) for a, r in kept]
    p_raw = [t_test_p(d) for d in diffs]
    result = []
    lv = simultaneous_level(len(kept), alpha)
    for (a, r), d, p, ph in zip(kept, diffs, p_raw, holm_adjust(p_raw)):
        mean, low, high = t_interval(d, lv)
        result.append(Comparison(a, r, mean, low, high, lv, p, ph, int(d.size), verdict_for(low, high, min_effect)))
    return result
