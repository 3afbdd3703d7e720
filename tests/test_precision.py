"""Seed planning and the intervals' coverage, on synthetic data whose variance components are set."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from distillery.core.config import parse_params
from distillery.reporting.seed_plan import plan_seeds
from distillery.reporting.stats import (mde, new_image_interval, paired_variance_parts, seeds_needed, t_interval,
                                        variance_at)

ROOT = Path(__file__).resolve().parents[1]


def test_seeds_needed_is_the_first_n_that_reaches_the_target():
    level = 1 - 0.05 / 4
    n = seeds_needed(1.71, 1.0, level)
    width = lambda k: st.t.ppf(0.5 + level / 2, k - 1) * 1.71 / math.sqrt(k)  # noqa: E731
    assert width(n) <= 1.0 < width(n - 1)
    assert seeds_needed(0.0, 1.0, level) == 2
    assert seeds_needed(50.0, 0.01, level, cap=100) == 101  # unreachable within the cap


def test_mde_by_hand():
    # n = 5, level 0.95: t(0.975, 4) = 2.776, t(0.8, 4) = 0.941 -> (2.776 + 0.941) * 2 / sqrt(5) = 3.325
    assert mde(2.0, 5, 0.95) == pytest.approx(3.325, abs=2e-3)


def test_variance_parts_recover_what_the_simulation_put_in():
    """Independent flips only: the flip part carries all the variance and rescales as 1/N."""
    rng = np.random.default_rng(0)
    seeds, n = 3000, 200
    p = rng.uniform(0.6, 1.0, n)
    a, b = rng.random((seeds, n)) < p, rng.random((seeds, n)) < p
    parts = paired_variance_parts(a, b)
    truth = 1e4 * 2 * (p * (1 - p)).sum() / n**2
    assert parts["flip_var"] == pytest.approx(truth, rel=0.05)
    assert abs(parts["model_var"]) < 0.1 * truth
    assert variance_at(parts, 4 * n) == pytest.approx(max(parts["model_var"], 0) + parts["flip_var"] / 4)


def _two_way(rng, reps, n, big_n, mu, sd_image, sd_seed, sd_noise):
    """d[r, s, i] = mu + image_i + seed_s + noise: reps independent experiments (points)."""
    image = rng.normal(0, sd_image, (reps, 1, big_n))
    seed = rng.normal(0, sd_seed, (reps, n, 1))
    return mu + image + seed + rng.normal(0, sd_noise, (reps, n, big_n)), mu + image.mean(axis=(1, 2))


@pytest.mark.parametrize("sd_image, sd_seed", [(30.0, 0.8), (5.0, 2.0)])
def test_both_intervals_cover_what_they_say_they_cover(sd_image, sd_seed):
    """Seed-only: the gap on these test images (mu + mean image effect); new-image: mu itself."""
    rng = np.random.default_rng(1)
    reps, n, big_n, level, mu = 2000, 6, 359, 0.95, 1.0
    d, conditional = _two_way(rng, reps, n, big_n, mu, sd_image, sd_seed, 40.0)
    seed_cover = new_cover = seed_cover_mu = 0
    for r in range(reps):
        _, lo, hi = t_interval(d[r].mean(1), level)
        seed_cover += lo <= conditional[r] <= hi
        seed_cover_mu += lo <= mu <= hi
        # new_image_interval takes 0/1 arrays and scales by 100: hand it d / 100 as "a" and zeros as "b"
        _, lo2, hi2 = new_image_interval(d[r] / 100, np.zeros_like(d[r]), level)
        new_cover += lo2 <= mu <= hi2
    assert 0.93 <= seed_cover / reps <= 0.97
    assert 0.93 <= new_cover / reps <= 0.985
    if sd_image == 30.0:  # images dominate: the seed-only interval is no interval for new images
        assert seed_cover_mu / reps < 0.8


def _val_predictions(rng, seeds, n, p_correct):
    y = rng.integers(0, 10, n)
    cols = {"label": y}
    for s in seeds:
        right = rng.random(n) < p_correct
        cols[f"seed_{s}"] = np.where(right, y, (y + 1) % 10)
    return pd.DataFrame(cols)


def test_the_plan_asks_more_seeds_for_noisier_comparisons_and_respects_the_cap():
    rng = np.random.default_rng(2)
    pilot = list(range(1, 31))  # the model part's estimate is noisy: a pilot this large makes the test sure
    params = parse_params({"final": {"seeds": pilot, "max_seeds": 40, "extend": "all"},
                           "report": {"target_halfwidth": 0.5, "primary": None}, "arms": {"with_teacher": ["soft", "hard"]}})
    preds = {arm: _val_predictions(rng, pilot, 300, p) for arm, p in
             {"none": 0.97, "control": 0.97, "soft": 0.97, "hard": 0.5}.items()}
    plan = plan_seeds(params, preds, test_images=1200)
    c = plan["comparisons"]
    assert set(c) == {"soft-none", "soft-control", "hard-none", "hard-control"} and plan["family"] == 4
    assert c["hard-none"]["seeds_needed"] > c["soft-none"]["seeds_needed"]
    # the flip part shrinks 4x from 300 val to 1200 test images
    assert c["soft-none"]["predicted_sd_test"] < c["soft-none"]["pilot_sd_val"]
    for k in c.values():
        assert k["seeds_planned"] == max(min(k["seeds_needed"], 40), 30)
    assert plan["arms"]["hard"]["seeds"] == 40  # capped
    assert plan["arms"]["hard"]["extra_seeds"] == list(range(31, 41))


@pytest.mark.slow
def test_the_seed_plan_stage_never_reads_the_test_split(tmp_path):
    """The stage runs in a project holding no prepared data at all: only val predictions and the split sizes."""
    rng = np.random.default_rng(3)
    (tmp_path / "metrics" / "val_predictions").mkdir(parents=True)
    for arm in ("none", "control", "soft", "hard"):
        _val_predictions(rng, [1, 2, 3, 4], 200, 0.9).to_csv(tmp_path / "metrics" / "val_predictions" / f"{arm}.csv",
                                                          index=False)
    (tmp_path / "metrics" / "data.json").write_text(json.dumps({"counts": {"train": 1, "val": 200, "test": 400}}))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    out = subprocess.run([sys.executable, str(ROOT / "pipeline" / "seed_plan.py")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "data").exists()
    plan = json.loads((tmp_path / "metrics" / "seed_plan.json").read_text())
    assert plan["test_images"] == 400 and plan["val_images"] == 200
    # the default: the primary's arms run final.primary_seeds, the others only the pilot
    assert {arm: a["seeds"] for arm, a in plan["arms"].items()} == {"none": 4, "control": 20, "soft": 20, "hard": 4}


def _probit_population(rng, theta_a, theta_b, sd_ease, sd_gap, sd_seed, size=400_000):
    """Δ (points) over new images and new seeds of the 0/1 model below, by Monte Carlo on a large sample."""
    ease, gap = rng.normal(0, sd_ease, size), rng.normal(0, sd_gap, size)
    seed_a, seed_b = rng.normal(0, sd_seed, size), rng.normal(0, sd_seed, size)
    return 100 * float(np.mean(st.norm.cdf(theta_a + ease + gap + seed_a) - st.norm.cdf(theta_b + ease + seed_b)))


def test_the_new_image_interval_covers_on_0_1_data_from_a_latent_model():
    """Correct/incorrect per (seed, image), as the report sees it: image i is easy or hard for both arms
    (ease_i) and more or less so for arm a (gap_i), seed s is a better or worse model (seed_s), and the
    0/1 outcome is a Bernoulli draw on top. The new-image interval must cover Δ over new images and
    seeds; the seed-only one must cover Δ on the images drawn (its own target)."""
    rng = np.random.default_rng(7)
    theta_a, theta_b, sd_ease, sd_gap, sd_seed = 1.6, 1.35, 1.0, 0.5, 0.15
    population = _probit_population(rng, theta_a, theta_b, sd_ease, sd_gap, sd_seed)
    reps, n, big_n, level = 600, 6, 359, 0.95
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)  # E over a new seed, per image (conditional target)
    weights = weights / weights.sum()
    new_cover = seed_cover = 0
    for _ in range(reps):
        ease, gap = rng.normal(0, sd_ease, big_n), rng.normal(0, sd_gap, big_n)
        la, lb = theta_a + ease + gap, theta_b + ease
        a = rng.random((n, big_n)) < st.norm.cdf(la + rng.normal(0, sd_seed, (n, 1)))
        b = rng.random((n, big_n)) < st.norm.cdf(lb + rng.normal(0, sd_seed, (n, 1)))
        _, lo, hi = new_image_interval(a, b, level)
        new_cover += lo <= population <= hi
        on_these = 100 * float(np.mean(st.norm.cdf(la[:, None] + sd_seed * nodes) @ weights
                                       - st.norm.cdf(lb[:, None] + sd_seed * nodes) @ weights))
        _, lo, hi = t_interval(100 * (a.mean(1) - b.mean(1)), level)
        seed_cover += lo <= on_these <= hi
    assert 0.92 <= new_cover / reps <= 0.99, new_cover / reps
    assert 0.92 <= seed_cover / reps <= 0.98, seed_cover / reps


@pytest.mark.parametrize("design", ["shared", "per_arm"])
def test_recipe_tuning_luck_leaves_the_same_recipe_interval_alone_and_breaks_best_vs_best(design):
    """Per-seed Δ_s = μ + luck_a − luck_b + seed noise, where luck is how good the recipe a study found
    turned out (SD 1 point, the size measured here). Same recipe: both arms train at one study's winner,
    the luck cancels and the seed interval covers μ. Best vs best: each arm has its own luck, which no
    seed replicates: the same interval covers μ far less often than it says."""
    rng = np.random.default_rng(3)
    reps, n, mu, level = 4000, 10, 1.0, 0.95
    luck_a = rng.normal(0, 1.0, reps)
    luck_b = luck_a if design == "shared" else rng.normal(0, 1.0, reps)
    covered = 0
    for r in range(reps):
        _, lo, hi = t_interval(mu + luck_a[r] - luck_b[r] + rng.normal(0, 1.7, n), level)
        covered += lo <= mu <= hi
    if design == "shared":
        assert 0.93 <= covered / reps <= 0.97
    else:
        assert covered / reps < 0.75


def test_the_primary_gets_its_declared_seeds_and_level_and_the_secondaries_keep_the_pilot():
    rng = np.random.default_rng(5)
    pilot = [1, 2, 3, 4]
    params = parse_params({"final": {"seeds": pilot, "primary_seeds": 12, "max_seeds": 30}})
    preds = {arm: _val_predictions(rng, pilot, 300, q) for arm, q in
             {"none": 0.9, "control": 0.9, "soft": 0.9, "hard": 0.6}.items()}
    plan = plan_seeds(params, preds, test_images=300)
    c = plan["comparisons"]
    assert plan["levels"]["soft-control"] == pytest.approx(0.95)  # the primary alone at the full alpha
    assert plan["levels"]["hard-none"] == pytest.approx(1 - 0.05 / 3)  # three secondaries, simultaneous
    assert c["soft-control"]["role"] == "primary" and c["hard-none"]["role"] == "secondary"
    soft_control = max(12, min(c["soft-control"]["seeds_needed"], 30))
    assert plan["arms"]["soft"]["seeds"] == plan["arms"]["control"]["seeds"] == soft_control
    assert plan["arms"]["none"]["seeds"] == plan["arms"]["hard"]["seeds"] == 4  # noisy hard is not extended
    assert c["hard-none"]["seeds_needed"] > 4 and c["hard-none"]["seeds_planned"] == 4
    assert c["soft-none"]["seeds_planned"] == 4  # pairs exist only where both arms ran
    assert plan["arms"]["soft"]["extra_seeds"] == list(range(5, soft_control + 1))


def test_without_common_random_numbers_the_paired_sd_is_the_unpaired_one():
    """unpaired_sd pairs seed s with s+1: on arms whose per-seed scores move together it is far above the paired SD."""
    from distillery.reporting.seed_plan import unpaired_sd

    rng = np.random.default_rng(7)
    seeds = list(range(1, 9))
    y = np.arange(400) % 10
    base = {s: rng.random(400) for s in seeds}
    skill = {s: 0.6 + 0.3 * rng.random() for s in seeds}  # a seed's luck, shared by both arms (CRN)
    a = pd.DataFrame({"label": y, **{f"seed_{s}": np.where(base[s] < skill[s], y, (y + 1) % 10) for s in seeds}})
    b = pd.DataFrame({"label": y, **{f"seed_{s}": np.where(base[s] < skill[s] - 0.02, y, (y + 1) % 10) for s in seeds}})
    paired = np.std([100 * ((a[f"seed_{s}"] == y).mean() - (b[f"seed_{s}"] == y).mean()) for s in seeds], ddof=1)
    assert paired < 1.5 and unpaired_sd(a, b, seeds) > 4 * paired
    assert unpaired_sd(a, b, seeds[:2]) is None
