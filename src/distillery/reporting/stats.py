"""Paired, Holm-corrected comparisons of arms across seeds.

Every arm is trained once per seed and seed s of arm A shares its seed (initialisation and data order) with
seed s of arm B, so we work on the per-seed paired differences d_s = 100 * (acc_A(s) - acc_B(s)) in points.
Pairing removes only the variance the two arms share; on the built-in digits that is little: most of the
seed-to-seed variance of d_s is single test images flipping between seeds, independently in each arm
(benchmarks/results/design_precision_h200.json; paired_variance_parts measures it on any run).

Method, and why:
* Interval: Student t on the mean of d, df = n - 1. With 3-5 seeds a bootstrap has too few distinct
  resamples to be trusted and a normal interval is far too narrow; the t interval is exact if d is
  normal and has close to nominal coverage for mild departures.
* p-value: two-sided one-sample t-test of H0: mean d = 0 (the test dual to the interval).
* Multiplicity, with a primary comparison (`report.primary`, declared before the run): serial
  gatekeeping. The primary is tested alone at the full α (its interval at 1 − α); only if it rejects
  Δ = 0 are the secondary comparisons tested, as one Holm family at α with simultaneous intervals at
  1 − α/m (m secondaries). The family-wise error of the "helped"/"hurt" claims (Δ ≠ 0 in the stated
  direction) is then ≤ α under any configuration of true effects: a false secondary claim needs the gate
  passed, which a null primary allows with probability ≤ α, and a non-null primary leaves the secondaries
  α to spend (tests/test_stats.py simulates it). A secondary that was not tested gets the verdict "not
  tested"; its interval is still shown, as description. Without a primary, all comparisons form one
  family as below. The refinements against min_effect ("by more than δ") read the same intervals and hold
  at their levels.
* Multiplicity within a family: comparisons sharing a reference are dependent. Two corrections, each for
  what it is good at:
  - p-values (H0: Δ = 0) are Holm-adjusted (step-down; controls the family-wise error rate under any
    dependence, and rejects at least whatever Bonferroni rejects);
  - intervals are simultaneous: each at level 1 - alpha/m (Bonferroni), so with probability >= 1 - alpha
    every interval covers its true Δ at once. Verdicts compare these bounds with min_effect, so a claim
    such as "helped by more than δ" holds family-wise. (Holm-stepped intervals, 1 - alpha/(m - i), are
    narrower but only justify "Δ != 0", not a bound against δ.) A simultaneous interval that excludes 0
    always comes with p_holm <= alpha; the converse can fail, and then the verdict follows the interval.
* Scope: the t interval is conditional on the fixed test split. It captures seed variance (initialisation
  and data order), not the sampling of test images, so it says how reliably the training recipe
  reproduces the gap on this test set. `new_image_interval` adds the sampling of test images (a two-way
  seeds × images model): how the gap would hold on new images of the same kind. Neither covers tuning
  luck (another study could have picked other settings).
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
    role: str = "family"  # primary | secondary (report.primary set) | family (no primary: one Holm family)
    sized: bool | None = None  # half-width <= report.target_halfwidth (None: no target given)

    def as_dict(self) -> dict:
        return json_ready(self)


def json_ready(record) -> dict:
    """A dataclass as a dict for JSON, which has no infinity or NaN: None reads as "no bound" or "none"."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(record).items()}


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
    half = halfwidth_at(float(d.std(ddof=1)), d.size, level) if d.size >= 2 else math.inf
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
    pts = f"{δ:g} point{'' if δ == 1 else 's'}"
    if not (math.isfinite(low) and math.isfinite(high)):  # first: ±inf would otherwise read "inconclusive"
        return "needs ≥ 2 seeds"
    if low > δ:
        return f"helped by more than {pts}"
    if 0 < low and high < δ:
        return f"helped, by less than {pts}"
    if 0 < low:
        return f"helped (gain may be under {pts})"
    if high < -δ:
        return f"hurt by more than {pts}"
    if high < 0 and -δ < low:
        return f"hurt, by less than {pts}"
    if high < 0:
        return f"hurt (loss may be under {pts})"
    if -δ <= low and high <= δ:
        return f"no effect larger than {pts}"
    return "inconclusive"


NOT_TESTED = "not tested (the primary comparison did not pass its gate)"


def compare_arms(per_seed_acc: dict[str, dict[int, float]], pairs: list[tuple[str, str]], min_effect: float,
                 alpha: float = 0.05, primary: tuple[str, str] | None = None,
                 target_halfwidth: float | None = None) -> list[Comparison]:
    """One Comparison per (arm, reference) pair whose arms both exist, the primary first when it is one of
    them. Without a primary the pairs form one Holm family; with one, serial gatekeeping (module doc)."""
    kept = [(a, r) for a, r in pairs if a in per_seed_acc and r in per_seed_acc]
    if primary not in kept:
        return _family(per_seed_acc, kept, min_effect, alpha, "family", True, target_halfwidth)
    first = _family(per_seed_acc, [primary], min_effect, alpha, "primary", True, target_halfwidth)
    gate = first[0].p_value <= alpha and first[0].n_seeds >= 2
    rest = [k for k in kept if k != primary]
    return first + _family(per_seed_acc, rest, min_effect, alpha, "secondary", gate, target_halfwidth)


def _family(per_seed_acc, kept, min_effect, alpha, role, tested, target) -> list[Comparison]:
    diffs = [paired_differences(per_seed_acc[a], per_seed_acc[r]) for a, r in kept]
    p_raw = [t_test_p(d) for d in diffs]
    result = []
    lv = simultaneous_level(len(kept), alpha)
    for (a, r), d, p, ph in zip(kept, diffs, p_raw, holm_adjust(p_raw)):
        mean, low, high = t_interval(d, lv)
        verdict = verdict_for(low, high, min_effect) if tested else NOT_TESTED
        sized = None if target is None else bool((high - low) / 2 <= target)
        result.append(Comparison(a, r, mean, low, high, lv, p, ph if tested else 1.0, int(d.size), verdict, role,
                                 sized))
    return result


def paired_variance_parts(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """Split the seed-to-seed variance of Δ_s = 100·(acc_a(s) − acc_b(s)) by what it scales with.

    `correct_*` are (seeds × images) 0/1 arrays, row s of both from seed s. Var(Δ_s) is the sum of all
    covariances between images' differences d_i = a_i − b_i over N²: the diagonal (`flip_var`: images
    flipping between seeds, ∝ 1/N, it shrinks on a larger split) and the rest (`model_var`: a seed's
    model better or worse on every image at once, independent of N). Both estimates are unbiased (ddof 1);
    `model_var` can come out negative by chance. Points².
    """
    d = np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64)
    seeds, n = d.shape
    if seeds < 2:
        raise ValueError("needs ≥ 2 seeds to estimate a variance")
    total = float(np.var(100.0 * d.mean(1), ddof=1))
    flip = float(100.0**2 * np.var(d, axis=0, ddof=1).sum() / n**2)
    return {"sd": math.sqrt(total), "var": total, "flip_var": flip, "model_var": total - flip, "images": int(n),
            "seeds": int(seeds)}


def variance_at(parts: dict[str, float], images: int) -> float:
    """The variance of Δ_s the same models would show on a split of `images` images (points²).

    The model part is floored at 0 before the flip part is rescaled: with a few pilot seeds its estimate
    swings by about the flip part's size, and a negative one would cancel the flip part it belongs to."""
    return max(parts["model_var"], 0.0) + parts["flip_var"] * parts["images"] / images


def t_quantile(level: float, n: int) -> float:
    """The two-sided t critical value of an interval at `level` from n paired differences (df n − 1)."""
    return float(_st.t.ppf(0.5 + level / 2, n - 1))


def halfwidth_at(sd: float, n: int, level: float) -> float:
    return t_quantile(level, n) * sd / math.sqrt(n) if n >= 2 else math.inf


def seeds_needed(sd: float, target: float, level: float, cap: int = 10_000) -> int:
    """The fewest seeds n ≥ 2 whose t interval at `level` has half-width ≤ target if the SD is `sd`.

    A plug-in rule (the t quantile at the final n, the pilot's SD taken as the truth): the achieved
    half-width scatters around the target as the final SD does. Stein's two-stage rule would guarantee
    it, but only by using the pilot's SD with its n0 − 1 degrees of freedom in the final interval: with a
    pilot of 3 seeds its t quantile at 1 − 0.05/8 is about 10, a hundred times more seeds than needed.
    Returns `cap` + 1 when even `cap` seeds would not do."""
    if sd <= 0:
        return 2
    for n in range(2, cap + 1):
        if halfwidth_at(sd, n, level) <= target:
            return n
    return cap + 1


def mde(sd: float, n: int, level: float, power: float = 0.8) -> float:
    """The smallest true Δ the simultaneous test at `level` detects with `power`, from n seeds at this SD
    (the usual (t_{1−α'/2} + t_{power}) · SD/√n, df n − 1)."""
    if n < 2:
        return math.inf
    return (t_quantile(level, n) + float(_st.t.ppf(power, n - 1))) * sd / math.sqrt(n)


def replication_halfwidth(sd: float, n: int, level: float = 0.95) -> float:
    """A rerun of the same design (n new seeds, same SD) lands within Δ̂ ± this with probability ≈ level:
    the difference of two independent means of n has SD sd·√(2/n)."""
    return t_quantile(level, n) * sd * math.sqrt(2.0 / n) if n >= 2 else math.inf


def verdict_stability(diff: float, sd: float, n: int, level: float, min_effect: float, draws: int = 4000,
                      seed: int = 0) -> float:
    """The share of simulated reruns (n normal per-seed differences with this mean and SD) whose interval
    at `level` gives the same verdict as (diff, sd, n) does: how likely another machine's run says the same,
    taking this run's estimates as the truth (a plug-in; rng seeded, so the report is deterministic)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    here = verdict_for(*t_interval(diff + sd * _unit_sample(n), level)[1:], min_effect)
    rng = np.random.default_rng(seed)
    d = rng.normal(diff, sd, size=(draws, n)) if sd > 0 else np.full((draws, n), diff)
    mean, s = d.mean(1), d.std(1, ddof=1)
    half = t_quantile(level, n) * s / math.sqrt(n)
    return float(np.mean([verdict_for(m - h, m + h, min_effect) == here for m, h in zip(mean, half)]))


def _unit_sample(n: int) -> np.ndarray:
    """n values with mean 0 and SD 1 exactly: t_interval of diff + sd·this is the interval of (diff, sd, n)."""
    z = np.linspace(-1.0, 1.0, n)
    return (z - z.mean()) / z.std(ddof=1)


def new_image_interval(correct_a: np.ndarray, correct_b: np.ndarray, level: float) -> tuple[float, float, float]:
    """(mean, low, high) of Δ over new seeds *and* new test images of the same kind, in points.

    d[s, i] = a − b on image i for seed s, as in a two-way random-effects model μ + image_i + seed_s +
    noise_si. Var(mean) = σ²_image/N + σ²_seed/n + σ²_noise/(nN), estimated without bias by
    S²_rows/n + S²_columns/N − F/n (F: mean per-image variance over seeds, divided by N), never below the
    seed-only S²_rows/n; t quantile with n − 1 df (conservative when images dominate)."""
    d = 100.0 * (np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64))
    n, big_n = d.shape
    mean = float(d.mean())
    if n < 2:
        return mean, -math.inf, math.inf
    rows = float(np.var(d.mean(1), ddof=1))
    cols = float(np.var(d.mean(0), ddof=1))
    flip = float(np.var(d, axis=0, ddof=1).mean() / big_n)
    var = max(rows / n + cols / big_n - flip / n, rows / n)
    half = t_quantile(level, n) * math.sqrt(var)
    return mean, mean - half, mean + half


def expected_best(values: np.ndarray, k: int) -> tuple[float, float]:
    """Expected validation performance (Dodge et al. 2019): mean and SD of the best of k trials drawn
    with replacement from the completed ones, i.e. what a study of k random trials would find.

    With the values sorted, the i-th smallest is the best of k draws with probability (i/N)^k − ((i−1)/N)^k.
    The trials come from the study's sampler, not independent random search: read the curve as the
    study's own trials reshuffled."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    if n == 0:
        return math.nan, math.nan
    i = np.arange(1, n + 1)
    w = (i / n) ** k - ((i - 1) / n) ** k
    mean = float(w @ v)
    return mean, math.sqrt(max(float(w @ v**2) - mean**2, 0.0))


_SHORT_VERDICTS = (("helped by more than", "gain>{d}"), ("helped, by less than", "gain<{d}"), ("helped", "gain"),
                   ("hurt by more than", "loss>{d}"), ("hurt, by less than", "loss<{d}"), ("hurt", "loss"),
                   ("no effect larger than", "|Δ|<{d}"), ("needs", "1 seed"), ("inconclusive", "inconclusive"),
                   ("not tested", "not tested"))


def short_verdict(verdict: str, min_effect: float) -> str:
    """verdict_for's sentence in a few characters, for a table column (headline metrics, `dvc exp show`)."""
    for prefix, short in _SHORT_VERDICTS:
        if verdict.startswith(prefix):
            return short.format(d=f"{min_effect:g}")
    raise ValueError(f"unknown verdict: {verdict!r}")
