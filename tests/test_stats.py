"""Effect sizes: the paired bootstrap and the verdicts."""

import numpy as np

from distillery.stats import paired_bootstrap, verdict_for


def test_identical_models_have_no_detectable_effect():
    rng = np.random.default_rng(0)
    c = (rng.random((2, 300)) < 0.8).astype(float)
    e = paired_bootstrap(c, c.copy(), n_boot=500)
    assert e.diff == 0.0 and e.low <= 0.0 <= e.high and e.verdict == "no detectable effect"


def test_clearly_better_model_helped_and_worse_hurt():
    rng = np.random.default_rng(1)
    base = (rng.random((3, 400)) < 0.6).astype(float)
    better = np.maximum(base, (rng.random((3, 400)) < 0.5))
    up = paired_bootstrap(better, base, n_boot=500)
    assert up.verdict == "helped" and up.low > 0 and up.diff > 10
    assert paired_bootstrap(base, better, n_boot=500).verdict == "hurt"


def test_diff_is_in_points_and_matches_the_means():
    a = np.array([[1, 1, 1, 0]], dtype=float)
    b = np.array([[1, 0, 0, 0]], dtype=float)
    assert paired_bootstrap(a, b, n_boot=200).diff == 50.0


def test_verdict_rules():
    assert verdict_for(0.1, 2.0) == "helped"
    assert verdict_for(-2.0, -0.1) == "hurt"
    assert verdict_for(-1.0, 1.0) == "no detectable effect"
