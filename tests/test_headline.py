"""The headline cells (reports/headline.json, the DVC metrics) and the MLflow summary's metrics."""

import math

import pytest

from distillery.reporting.headline import comparison_cell, headline
from distillery.reporting.stats import Comparison, short_verdict, verdict_for
from distillery.reporting.summary_run import summary_metrics


def _comp(arm, ref, diff, low, high):
    return Comparison(arm, ref, diff, low, high, 0.9875, 0.01, 0.04, 5, verdict_for(low, high, 1.0))


@pytest.mark.parametrize("low,high,short", [
    (1.2, 3.0, "gain>1"), (0.1, 0.8, "gain<1"), (0.2, 1.6, "gain"), (-3.0, -1.5, "loss>1"), (-0.9, -0.1, "loss<1"),
    (-2.0, -0.3, "loss"), (-0.6, 0.7, "|Δ|<1"), (-0.5, 2.5, "inconclusive"), (-math.inf, math.inf, "1 seed")])
def test_every_verdict_has_a_short_form(low, high, short):
    assert short_verdict(verdict_for(low, high, 1.0), 1.0) == short


def test_short_form_names_the_declared_threshold():
    assert short_verdict(verdict_for(0.6, 1.4, 0.5), 0.5) == "gain>0.5"


def test_cell_is_delta_halfwidth_verdict():
    assert comparison_cell(_comp("soft", "none", 2.75, 2.18, 3.32), 1.0) == "+2.75±0.57 gain>1"
    assert comparison_cell(_comp("hard", "none", -0.33, -0.91, 0.25), 1.0) == "-0.33±0.58 |Δ|<1"
    assert comparison_cell(_comp("soft", "fake", 0.5, -math.inf, math.inf), 1.0) == "+0.50±∞ 1 seed"


def test_headline_holds_cells_then_accuracies_in_percent():
    evaluation = {"none": {"test_acc": 0.914}, "soft": {"test_acc": 0.94234}, "teacher": {"test_acc": 0.975}}
    out = headline([_comp("soft", "none", 2.75, 2.18, 3.32)], evaluation, ["none", "soft"], 1.0)
    assert out == {"soft-none": "+2.75±0.57 gain>1", "none": 91.4, "soft": 94.23, "teacher": 97.5}
    assert list(out)[0] == "soft-none"  # comparisons first: the columns dvc exp show keeps when it must collapse


def test_summary_metrics_drop_unbounded_intervals():
    evaluation = {"none": {"test_acc": 0.9}, "soft": {"test_acc": 0.95}}
    out = summary_metrics([_comp("soft", "none", 5.0, 3.0, 7.0), _comp("soft", "x", 1.0, -math.inf, math.inf)],
                          evaluation, ["none", "soft"])
    assert out["soft-none.delta"] == 5.0 and out["soft-none.low"] == 3.0 and out["test_acc.soft"] == 0.95
    assert "soft-x.low" not in out and out["soft-x.delta"] == 1.0
