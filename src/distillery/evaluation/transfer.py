"""What the teacher has to give beyond the labels, and how much of it each arm took.

Two questions a null result must answer before it is explained:

* **Signal**: on the views the students train on, do the teacher's targets differ from the labels
  they are trained on anyway? `label_signal` measures how often its argmax disagrees with the label,
  the probability it gives the true class, how its remaining mass is spread (entropy of the
  non-target distribution over log(K − 1): 1 is uniform, i.e. no "dark knowledge"), and the distance
  between its τ-softened output and the τ-softened training target (the smoothed, possibly mixed
  label). A teacher whose softened targets sit on the labels teaches the distillation token the
  labels again: labels in disguise.
* **Transfer**: does a student end up closer to the teacher than the label-trained baseline?
  `fidelity` measures top-1 agreement and KL(teacher ‖ student), and the share right of the
  *transferable* images: those the teacher gets right and the baseline arm gets wrong in most of
  its seeds. Agreement alone is mostly accuracy; the transferable share is the part only the teacher
  could have taught.

Pure numpy: arrays of logits in, numbers out, so every value is checked by hand in the tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def softmax(z: np.ndarray, tau: float = 1.0) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64) / tau
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def soften(p: np.ndarray, tau: float) -> np.ndarray:
    """A distribution at temperature τ: softmax(log p / τ); zero stays zero."""
    with np.errstate(divide="ignore"):
        return softmax(np.log(np.asarray(p, dtype=np.float64)), tau)


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) per row, in nats; inf where q has no mass where p has some."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=1)


@dataclass(frozen=True)
class LabelSignal:
    n: int  # views scored
    tau: float  # the temperature the distances are taken at (the soft arm's τ; 1 without it)
    disagreement: float  # share of views whose teacher argmax is not the target's argmax
    true_class_prob: float  # mean teacher probability (τ = 1) of the target's argmax class
    label_true_class_prob: float  # the same for the target itself (1 − ε(K−1)/K with smoothing ε, no mixing)
    nontarget_entropy: float  # mean entropy of the teacher's non-target distribution / log(K − 1), in [0, 1]
    kl_to_target: float | None  # mean KL(teacher^τ ‖ target^τ), nats; None when infinite (a one-hot target)
    tv_to_target: float  # mean total variation between teacher^τ and target^τ: the share of the
    #                      softened target's mass the teacher moves, in [0, 1]

    def as_dict(self) -> dict:
        return asdict(self)


def label_signal(z_t: np.ndarray, target: np.ndarray, tau: float) -> LabelSignal:
    """The teacher's logits `z_t` (N, K) against the training targets `target` (N, K, rows sum to 1)."""
    z_t, target = np.asarray(z_t, dtype=np.float64), np.asarray(target, dtype=np.float64)
    n, k = z_t.shape
    p = softmax(z_t)
    y = target.argmax(axis=1)
    rows = np.arange(n)
    others = np.ones_like(p, dtype=bool)
    others[rows, y] = False
    rest = p[others].reshape(n, k - 1)
    rest = rest / np.clip(rest.sum(axis=1, keepdims=True), 1e-300, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(rest > 0, rest * np.log(rest), 0.0).sum(axis=1)
    p_tau, t_tau = softmax(z_t, tau), soften(target, tau)
    kl = kl_rows(p_tau, t_tau)
    return LabelSignal(
        n=n, tau=float(tau), disagreement=float((p.argmax(axis=1) != y).mean()),
        true_class_prob=float(p[rows, y].mean()), label_true_class_prob=float(target[rows, y].mean()),
        nontarget_entropy=float(ent.mean() / np.log(k - 1)) if k > 2 else 1.0,
        kl_to_target=float(kl.mean()) if np.isfinite(kl).all() else None,
        tv_to_target=float(0.5 * np.abs(p_tau - t_tau).sum(axis=1).mean()))


def consistent_errors(preds: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Images a set of models (an arm's seeds) gets wrong in more than half of them."""
    wrong = np.mean([np.asarray(p) != labels for p in preds], axis=0)
    return wrong > 0.5


def fidelity(z_s: np.ndarray, z_t: np.ndarray, labels: np.ndarray, baseline_wrong: np.ndarray) -> dict:
    """One student against the teacher on one split.

    `baseline_wrong`: the images the label-trained baseline gets wrong (consistent_errors); with the
    teacher right on them they are the transferable set."""
    z_s, z_t, labels = np.asarray(z_s), np.asarray(z_t), np.asarray(labels)
    s_pred, t_pred = z_s.argmax(axis=1), z_t.argmax(axis=1)
    transferable = (t_pred == labels) & np.asarray(baseline_wrong)
    teacher_wrong = t_pred != labels
    return {
        "agreement": float((s_pred == t_pred).mean()),
        "kl_from_teacher": float(kl_rows(softmax(z_t), softmax(z_s)).mean()),
        "n_transferable": int(transferable.sum()),
        "transferable_right": float((s_pred[transferable] == labels[transferable]).mean()) if transferable.any() else None,
        "n_teacher_wrong": int(teacher_wrong.sum()),
        "copies_teacher_errors": float((s_pred[teacher_wrong] == t_pred[teacher_wrong]).mean()) if teacher_wrong.any() else None,
    }


def agreement_by_class(z_s: np.ndarray, z_t: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Top-1 agreement with the teacher among the images of each true class (None for an absent class)."""
    same = np.asarray(z_s).argmax(axis=1) == np.asarray(z_t).argmax(axis=1)
    return [float(same[labels == c].mean()) if (labels == c).any() else None for c in range(num_classes)]


def mean_over_seeds(rows: list[dict]) -> dict:
    """Field-wise mean of per-seed fidelity dicts (None entries skipped; counts averaged too)."""
    out: dict = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = float(np.mean(values)) if values else None
    return out
