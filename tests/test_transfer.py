"""What the teacher has to give and what each arm took (evaluation/transfer.py), checked by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from distillery.core.config import AugmentConfig, TrainConfig
from distillery.evaluation.teacher_views import teacher_on_views
from distillery.evaluation.transfer import (agreement_by_class, consistent_errors, fidelity, label_signal,
                                            mean_over_seeds)

from test_train import toy_data


def logits_of(p):
    return np.log(np.asarray(p, dtype=np.float64))


def test_label_signal_of_one_view_by_hand():
    # teacher (0.7, 0.2, 0.1) against the label 0 smoothed with ε = 0.3 over 3 classes: (0.8, 0.1, 0.1)
    s = label_signal(logits_of([[0.7, 0.2, 0.1]]), np.array([[0.8, 0.1, 0.1]]), tau=1.0)
    assert s.n == 1 and s.disagreement == 0.0
    assert s.true_class_prob == pytest.approx(0.7) and s.label_true_class_prob == pytest.approx(0.8)
    # non-target (0.2, 0.1) renormalised to (2/3, 1/3), entropy over log 2
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert s.nontarget_entropy == pytest.approx(h / math.log(2))
    assert s.kl_to_target == pytest.approx(0.7 * math.log(0.7 / 0.8) + 0.2 * math.log(0.2 / 0.1))
    assert s.tv_to_target == pytest.approx(0.1)


def test_label_signal_softens_both_sides_at_tau():
    # at τ = 2 each side becomes proportional to the square root of its probabilities
    p = np.sqrt([0.7, 0.2, 0.1]); p /= p.sum()
    t = np.sqrt([0.8, 0.1, 0.1]); t /= t.sum()
    s = label_signal(logits_of([[0.7, 0.2, 0.1]]), np.array([[0.8, 0.1, 0.1]]), tau=2.0)
    assert s.kl_to_target == pytest.approx(float((p * np.log(p / t)).sum()))
    assert s.tv_to_target == pytest.approx(0.5 * float(np.abs(p - t).sum()))
    assert s.true_class_prob == pytest.approx(0.7)  # the τ = 1 numbers do not move


def test_label_signal_counts_disagreement_and_has_no_kl_to_a_one_hot_label():
    z = logits_of([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    s = label_signal(z, np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), tau=1.0)
    assert s.disagreement == 0.5
    assert s.true_class_prob == pytest.approx((0.6 + 0.2) / 2)
    assert s.kl_to_target is None  # the teacher puts mass where the label has none
    assert s.tv_to_target == pytest.approx((0.4 + 0.8) / 2)


def test_a_teacher_equal_to_the_smoothed_label_has_nothing_to_give():
    target = np.full((4, 5), 0.025)
    target[np.arange(4), [0, 1, 2, 3]] = 0.9
    s = label_signal(np.log(target), target, tau=4.0)
    assert s.kl_to_target == pytest.approx(0.0, abs=1e-12) and s.tv_to_target == pytest.approx(0.0, abs=1e-12)
    assert s.nontarget_entropy == pytest.approx(1.0)  # the smoothing's uniform rest


def test_consistent_errors_are_a_majority_of_seeds():
    labels = np.array([0, 1, 2, 0])
    preds = [np.array([1, 1, 2, 0]), np.array([1, 0, 2, 0]), np.array([0, 0, 2, 1])]
    assert consistent_errors(preds, labels).tolist() == [True, True, False, False]


def test_fidelity_by_hand():
    labels = np.array([0, 1, 2, 0, 1])
    z_t = np.eye(3)[[0, 1, 2, 1, 1]] * 5  # right on 0, 1, 2, 4; wrong on 3 (says 1)
    z_s = np.eye(3)[[0, 2, 2, 1, 0]] * 5  # agrees with the teacher on 0, 2, 3
    baseline_wrong = np.array([False, True, True, True, True])
    f = fidelity(z_s, z_t, labels, baseline_wrong)
    assert f["agreement"] == pytest.approx(3 / 5)
    # transferable: teacher right and baseline wrong = images 1, 2, 4; the student gets image 2 right
    assert f["n_transferable"] == 3 and f["transferable_right"] == pytest.approx(1 / 3)
    assert f["n_teacher_wrong"] == 1 and f["copies_teacher_errors"] == 1.0
    # identical rows contribute 0; each of the two differing one-hot-like rows (5, 0, 0) vs (0, 5, 0):
    e5 = math.exp(5)
    peak, rest = e5 / (e5 + 2), 1 / (e5 + 2)
    kl_diff = peak * math.log(peak / rest) + rest * math.log(rest / peak)
    assert f["kl_from_teacher"] == pytest.approx(2 * kl_diff / 5)
    assert agreement_by_class(z_s, z_t, labels, 4) == [1.0, 0.0, 1.0, None]


def test_mean_over_seeds_skips_undefined_values():
    rows = [{"a": 1.0, "b": None}, {"a": 3.0, "b": None}, {"a": 2.0, "b": 0.5}]
    assert mean_over_seeds(rows) == {"a": 2.0, "b": 0.5}


class ConstantTeacher(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.bias = nn.Parameter(torch.arange(classes, dtype=torch.float32))

    def forward(self, x):
        return self.bias.expand(len(x), -1)


def test_teacher_on_views_scores_the_training_targets_of_the_recipe():
    data = toy_data()
    train = TrainConfig(batch_size=16, label_smoothing=0.1)
    z, target = teacher_on_views(ConstantTeacher(3), data, AugmentConfig(translate=1), train, 0.0, view_seed=1)
    n = len(data.splits["train"].y) // 16 * 16  # the ragged last batch is dropped, as in training
    assert z.shape == target.shape == (n, 3)
    assert np.allclose(target.max(1), 0.9 + 0.1 / 3) and np.allclose(target.sum(1), 1.0)
    assert np.allclose(z, [0.0, 1.0, 2.0])
    # each training image at most once per epoch: no class more often than it has images
    counts, have = np.bincount(target.argmax(1), minlength=3), np.bincount(data.splits["train"].y, minlength=3)
    assert (counts <= have).all() and counts.sum() == n
    _, mixed = teacher_on_views(ConstantTeacher(3), data, AugmentConfig(translate=1), train, 0.8, view_seed=1)
    assert (mixed.max(1) < 0.9).any()  # Mixup/CutMix targets mix two labels
