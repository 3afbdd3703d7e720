"""The end-of-training check (reporting/convergence.py) on synthetic learning curves with a known truth."""

import numpy as np
import pytest

from distillery.reporting.convergence import learning_lines, learning_of, window_of


def curves(shape, seeds=5, epochs=40, noise=0.0, rng=None):
    """seed -> history rows, val accuracy shape(epoch) plus Gaussian noise (fractions, as the CSVs hold)."""
    rng = rng or np.random.default_rng(0)
    return {s: [{"epoch": e, "val_acc": shape(e) + noise * rng.standard_normal()} for e in range(1, epochs + 1)]
            for s in range(seeds)}


def test_the_window_is_the_last_quarter_and_never_under_three_epochs():
    assert window_of(40) == (31, 40)
    assert window_of(30) == (23, 30)
    assert window_of(4) == (2, 4) and window_of(3) == (1, 3)


def test_a_straight_rise_is_measured_exactly_and_called_rising():
    k = learning_of("soft", curves(lambda e: 0.5 + 0.002 * e), teacher_val=0.99)
    assert k.slope == pytest.approx(2.0) and k.low == pytest.approx(2.0) and k.rising  # 0.2 points/epoch
    assert k.final_val == pytest.approx(58.0) and k.gap_to_teacher == pytest.approx(41.0)
    assert (k.first_epoch, k.last_epoch, k.n_seeds) == (31, 40, 5)


def test_a_curve_that_plateaued_early_is_not_rising():
    k = learning_of("none", curves(lambda e: 0.9 - 0.4 * np.exp(-e / 3), noise=0.005), teacher_val=None)
    assert not k.rising and k.low < 0 < k.high and k.gap_to_teacher is None


def test_a_slow_saturating_curve_is_still_rising_under_noise():
    """Time constant 40 epochs over 40 epochs: still 0.37 of the way to go at the end."""
    k = learning_of("control", curves(lambda e: 0.95 - 0.5 * np.exp(-e / 40), noise=0.01), teacher_val=0.99)
    assert k.rising and k.slope > 0


def test_flat_noisy_curves_are_called_rising_at_most_at_the_intervals_rate():
    """No trend at all: the 95% two-sided interval lies above 0 in about 2.5% of arms."""
    rng = np.random.default_rng(1)
    calls = [learning_of("x", curves(lambda e: 0.8, seeds=4, noise=0.02, rng=rng), None).rising for _ in range(400)]
    assert np.mean(calls) < 0.05


def test_one_seed_uses_the_fits_own_error():
    rng = np.random.default_rng(2)
    k = learning_of("x", curves(lambda e: 0.8, seeds=1, noise=0.02, rng=rng), None)
    assert k.n_seeds == 1 and k.low < k.slope < k.high


def test_too_short_a_history_gives_nothing():
    assert learning_of("x", {0: [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.6}]}, None) is None


def test_the_report_warns_before_the_verdicts_only_when_an_arm_is_rising():
    rising = learning_of("soft", curves(lambda e: 0.5 + 0.002 * e), 0.99)
    flat = learning_of("none", curves(lambda e: 0.9 + 0 * e, noise=0.001), 0.99)
    assert any(line.startswith("**Undertrained**: soft still rising") for line in learning_lines([rising, flat]))
    assert not any("Undertrained" in line for line in learning_lines([flat]))
    assert learning_lines([]) == []
