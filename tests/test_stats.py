"""Paired t intervals over seeds, Holm correction, verdicts, and their coverage on synthetic data."""

import json
import math

import numpy as np
import pytest

from distillery.reporting.stats import (compare_arms, holm_adjust, paired_differences, simultaneous_level, t_interval,
                                       t_test_p, verdict_for)

PAIRS = [("soft", "none"), ("hard", "none"), ("soft", "control"), ("hard", "control")]


def test_t_interval_matches_hand_computation():
    mean, low, high = t_interval(np.array([1.0, 2.0, 3.0]))
    half = 4.302653 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n), sd = 1
    assert mean == pytest.approx(2.0)
    assert low == pytest.approx(2 - half, abs=1e-4) and high == pytest.approx(2 + half, abs=1e-4)


def test_t_interval_single_seed_is_unbounded():
    assert t_interval(np.array([1.5])) == (1.5, -math.inf, math.inf)


def test_t_test_p_matches_hand_computation_and_edge_cases():
    assert t_test_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(0.07418, abs=1e-5)  # t = 3.4641, df 2
    assert t_test_p(np.array([2.0, 2.0, 2.0])) == 0.0
    assert t_test_p(np.zeros(4)) == 1.0
    assert t_test_p(np.array([3.0])) == 1.0


def test_holm_adjust():
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.7, 0.001, 0.6]) == pytest.approx([1.0, 0.003, 1.0])  # input order kept, capped at 1
    assert holm_adjust([]) == []


def test_simultaneous_level_is_bonferroni():
    assert simultaneous_level(4, 0.05) == pytest.approx(0.9875)
    assert simultaneous_level(1, 0.05) == pytest.approx(0.95)


def test_paired_differences_match_seeds():
    d = paired_differences({2: 0.80, 0: 0.70, 5: 0.9}, {0: 0.65, 2: 0.81, 7: 0.1})
    np.testing.assert_allclose(d, [5.0, -1.0])  # seeds 0 and 2, in seed order, in points
    with pytest.raises(ValueError, match=r"\[1\].*\[2\]"):
        paired_differences({1: 0.5}, {2: 0.5})


@pytest.mark.parametrize("low, high, expected", [
    (1.5, 3.0, "helped by more than 1 point"),
    (0.5, 3.0, "helped (gain may be under 1 point)"),
    (-3.0, -1.5, "hurt by more than 1 point"),
    (-3.0, -0.5, "hurt (loss may be under 1 point)"),
    (-0.8, 0.9, "no effect larger than 1 point"),
    (-0.5, 2.0, "inconclusive"),
    (-math.inf, math.inf, "needs ≥ 2 seeds"),
])
def test_verdict_rules(low, high, expected):
    assert verdict_for(low, high, 1.0) == expected


def _simulate_pair(rng, n, delta):
    """Per-seed accuracies of two arms: a shared per-seed part (the pairing) plus independent noise."""
    shared = rng.normal(0, 1.5, n)
    a = 0.75 + (shared + delta + rng.normal(0, 0.6, n)) / 100
    b = 0.75 + (shared + rng.normal(0, 0.6, n)) / 100
    return dict(enumerate(a)), dict(enumerate(b))


@pytest.mark.parametrize("n", [5, 3])
def test_t_interval_coverage_with_known_effect(n):
    rng = np.random.default_rng(1234 + n)
    hits = 0
    for _ in range(4000):
        _, low, high = t_interval(paired_differences(*_simulate_pair(rng, n, 2.0)))
        hits += low <= 2.0 <= high
    assert 0.935 <= hits / 4000 <= 0.965


def test_holm_and_simultaneous_intervals_control_family_wise_error_and_unadjusted_does_not():
    rng = np.random.default_rng(7)
    sims, any_holm, any_miss, any_raw = 2000, 0, 0, 0
    true = {"soft": 2.0, "hard": 0.0, "none": 0.0, "control": 0.0}  # soft really helps by 2 points; nothing else differs
    for _ in range(sims):
        shared = rng.normal(0, 1.5, 5)
        acc = {arm: dict(enumerate(0.75 + (shared + true[arm] + rng.normal(0, 0.6, 5)) / 100)) for arm in true}
        comps = compare_arms(acc, PAIRS, min_effect=1.0)  # the report's 4 comparisons, sharing references
        for c in comps:
            if c.low > 0 or c.high < 0:
                assert c.p_holm <= 0.05  # an interval that excludes 0 always agrees with Holm
        any_holm += any(c.p_holm <= 0.05 for c in comps if c.arm == "hard")  # only true nulls count as errors
        any_miss += any(not (c.low <= true[c.arm] - true[c.reference] <= c.high) for c in comps)
        any_raw += any(not (lo <= 0 <= hi) for _, lo, hi in
                       (t_interval(paired_differences(acc[a], acc[r])) for a, r in PAIRS if a == "hard"))
    assert any_holm / sims <= 0.06  # family-wise error of the tests of Δ = 0
    assert any_miss / sims <= 0.06  # some interval misses its true Δ: the simultaneous coverage
    assert any_raw / sims > 0.07  # two uncorrected 95% intervals on true nulls err more often


def test_compare_arms_end_to_end():
    none = {s: 0.70 + 0.01 * s for s in range(5)}
    acc = {
        "none": none,
        "soft": {s: none[s] + g / 100 for s, g in enumerate([3.0, 3.5, 2.5, 3.2, 2.8])},
        "hard": {s: none[s] + g / 100 for s, g in enumerate([0.1, -0.1, 0.05, -0.05, 0.0])},
        "one": {0: 0.9},
    }
    comps = compare_arms(acc, PAIRS, min_effect=1.0)  # control missing: family is the two pairs vs none
    assert [(c.arm, c.reference) for c in comps] == [("soft", "none"), ("hard", "none")]
    soft, hard = comps
    assert soft.diff == pytest.approx(3.0) and soft.n_seeds == 5
    assert soft.verdict == "helped by more than 1 point" and soft.p_holm < 0.05
    assert soft.level == hard.level == pytest.approx(1 - 0.05 / 2)  # m = 2, not 4
    assert hard.verdict == "no effect larger than 1 point"
    assert soft.low < soft.diff < soft.high and soft.p_holm == pytest.approx(2 * soft.p_value)

    acc["control"] = {s: v - 0.002 for s, v in none.items()}
    four = compare_arms(acc, PAIRS, 1.0)
    assert len(four) == 4 and max(c.level for c in four) == pytest.approx(1 - 0.05 / 4)  # m = 4 now

    single = compare_arms(acc, [("one", "none")], 1.0)[0]
    assert single.verdict == "needs ≥ 2 seeds" and single.p_value == 1.0 and single.n_seeds == 1
    d = single.as_dict()
    assert d["low"] is None and d["high"] is None and json.loads(json.dumps(d)) == d


def test_expected_best_by_hand():
    from distillery.reporting.stats import expected_best

    values = np.array([3.0, 1.0, 2.0])
    assert expected_best(values, 1) == pytest.approx((2.0, math.sqrt(2 / 3)))
    # k = 2: P(best = 1, 2, 3) = 1/9, 3/9, 5/9 -> mean 22/9, E[best²] = (1 + 12 + 45)/9 = 58/9
    mean, sd = expected_best(values, 2)
    assert mean == pytest.approx(22 / 9) and sd == pytest.approx(math.sqrt(58 / 9 - (22 / 9) ** 2))
    assert expected_best(values, 200)[0] == pytest.approx(3.0)  # many draws: the best one, surely
    assert expected_best(np.array([0.5] * 4), 3) == (0.5, 0.0)


def test_verdicts_say_point_or_points():
    assert verdict_for(2.5, 3.0, 2.0) == "helped by more than 2 points"
    assert verdict_for(0.2, 0.9, 0.5) == "helped (gain may be under 0.5 points)"


# ---------------------------------------------------------------- primary comparison and gatekeeping
def _acc_from_differences(d_by_arm: dict[str, np.ndarray]) -> dict[str, dict[int, float]]:
    """Per-seed accuracies whose paired differences against the reference `ref` are d (points)."""
    n = len(next(iter(d_by_arm.values())))
    acc = {"ref": {s: 0.5 for s in range(n)}}
    acc.update({arm: {s: 0.5 + d[s] / 100 for s in range(n)} for arm, d in d_by_arm.items()})
    return acc


def test_the_primary_is_tested_alone_at_full_alpha_and_secondaries_only_behind_it():
    d = {"p": np.array([2.0, 3.0, 2.5, 3.5, 2.8]), "s": np.array([1.0, -1.0, 0.5, 2.0, -0.5])}
    comps = compare_arms(_acc_from_differences(d), [("s", "ref"), ("p", "ref")], 1.0, 0.05, ("p", "ref"), 1.0)
    assert [(k.arm, k.role) for k in comps] == [("p", "primary"), ("s", "secondary")]  # primary first
    p = comps[0]
    mean, low, high = t_interval(d["p"], 0.95)
    assert p.level == pytest.approx(0.95) and (p.low, p.high) == (pytest.approx(low), pytest.approx(high))
    assert p.p_holm == p.p_value and p.verdict == "helped by more than 1 point"
    assert p.sized is ((high - low) / 2 <= 1.0)
    failing = {"p": np.array([1.0, -1.0, 0.5, 2.0, -0.5]), "s": np.array([5.0, 5.1, 4.9, 5.0, 5.2])}
    gated = compare_arms(_acc_from_differences(failing), [("p", "ref"), ("s", "ref")], 1.0, 0.05, ("p", "ref"))
    assert gated[0].verdict == "inconclusive"
    assert gated[1].verdict.startswith("not tested") and gated[1].p_holm == 1.0  # s is huge, but the gate is shut
    assert math.isfinite(gated[1].low)  # its interval is still there, as description


def test_without_a_primary_every_comparison_is_one_holm_family():
    d = {"a": np.array([2.0, 3.0, 2.5]), "b": np.array([1.0, 1.5, 0.5])}
    one = compare_arms(_acc_from_differences(d), [("a", "ref"), ("b", "ref")], 1.0, 0.05)
    assert {k.role for k in one} == {"family"} and one[0].level == pytest.approx(0.975)
    assert compare_arms(_acc_from_differences(d), [("a", "ref"), ("b", "ref")], 1.0, 0.05, ("c", "ref"))[0].role == "family"


@pytest.mark.parametrize("effects", [
    {"p": 0.0, "s1": 0.0, "s2": 0.0, "s3": 0.0},  # global null: only the gate protects the secondaries
    {"p": 3.0, "s1": 0.0, "s2": 0.0, "s3": 0.0},  # the gate opens for real: the Holm family spends alpha
    {"p": 3.0, "s1": 2.0, "s2": 0.0, "s3": -2.0},  # mixed
    {"p": 0.0, "s1": 3.0, "s2": 3.0, "s3": 0.0},  # null primary, real secondaries: must stay untested mostly
])
def test_gatekeeping_holds_the_family_wise_error_on_synthetic_runs(effects):
    """Over many simulated runs with known effects, the share with any false helped/hurt claim (a claim of
    a sign where Δ = 0, or the wrong sign) is at most alpha, up to Monte Carlo error."""
    rng = np.random.default_rng(11)
    alpha, n, runs, sd = 0.05, 8, 3000, 2.0
    pairs = [(arm, "ref") for arm in effects]
    bad = 0
    for _ in range(runs):
        d = {arm: rng.normal(mu, sd, n) for arm, mu in effects.items()}
        comps = compare_arms(_acc_from_differences(d), pairs, 1.0, alpha, ("p", "ref"))
        for k in comps:
            if k.verdict.startswith(("not tested", "inconclusive", "no effect")) or k.low <= 0 <= k.high:
                continue
            claimed = 1 if k.low > 0 else -1
            if np.sign(effects[k.arm]) != claimed:
                bad += 1
                break
    assert bad / runs <= alpha + 2.6 * math.sqrt(alpha * (1 - alpha) / runs)


def test_replication_halfwidth_and_verdict_stability():
    from distillery.reporting.stats import replication_halfwidth, verdict_stability

    assert replication_halfwidth(2.0, 8) == pytest.approx(2.364624 * 2.0 * math.sqrt(2 / 8), rel=1e-5)
    assert math.isinf(replication_halfwidth(2.0, 1))
    # far from every boundary: every rerun says the same; on a boundary: about half of them
    assert verdict_stability(5.0, 0.5, 10, 0.95, 1.0) == 1.0
    on_edge = verdict_stability(1.0 + 2.262157 * 1.0 / math.sqrt(10), 1.0, 10, 0.95, 1.0)
    assert 0.3 < on_edge < 0.7
    assert verdict_stability(5.0, 0.5, 10, 0.95, 1.0, seed=1) == verdict_stability(5.0, 0.5, 10, 0.95, 1.0, seed=1)
