"""Whether the students had finished learning when training stopped: the slope of val accuracy over the last
epochs of every final seed, with its interval over seeds, and how far below the teacher each arm ends.

An arm whose val accuracy still rises at the end of its schedule was stopped before it learned: a difference
between such arms says which learns faster, not what each can reach (DeiT's gains shrink with longer
schedules). A flat end is weaker evidence the other way: a cosine schedule flattens every curve as its
learning rate decays, so "not rising" means "not rising at this schedule", and the epoch budget chosen on val
(the recipe study) is what answers "would more epochs help".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

TAIL = 0.25  # the last quarter of the epochs: long enough for a slope, late enough to be the end
MIN_WINDOW = 3  # epochs a slope needs


@dataclass(frozen=True)
class Learning:
    """One arm's end of training, in accuracy points (val)."""

    arm: str
    n_seeds: int
    first_epoch: int  # the window the slope is fitted on, inclusive
    last_epoch: int
    slope: float  # points per 10 epochs, mean over seeds
    low: float  # its interval at `level` (t over seeds; with one seed, the fit's own)
    high: float
    level: float
    final_val: float  # mean over seeds of the last epoch's val accuracy
    gap_to_teacher: float | None  # teacher val − final_val

    @property
    def rising(self) -> bool:
        return bool(self.low > 0)


def window_of(epochs: int, tail: float = TAIL) -> tuple[int, int]:
    """The last `tail` of a run of `epochs` (1-based, inclusive), at least MIN_WINDOW epochs."""
    size = min(epochs, max(MIN_WINDOW, int(np.ceil(tail * epochs))))
    return epochs - size + 1, epochs


def _slope(epoch: np.ndarray, acc: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of acc on epoch and its standard error."""
    fit = stats.linregress(epoch, acc)
    return float(fit.slope), float(fit.stderr)


def learning_of(arm: str, histories: dict[int, list[dict[str, float]]], teacher_val: float | None,
                level: float = 0.95) -> Learning | None:
    """The arm's end-of-training slope from its per-seed histories (seed -> epochs of {epoch, val_acc}); None
    when no seed has enough epochs."""
    curves = [(np.array([r["epoch"] for r in h], float), 100 * np.array([r["val_acc"] for r in h], float))
              for h in histories.values() if len(h) >= MIN_WINDOW]
    if not curves:
        return None
    epochs = int(min(c[0].max() for c in curves))
    first, last = window_of(epochs)
    fits = [_slope(e[(e >= first) & (e <= last)], a[(e >= first) & (e <= last)]) for e, a in curves]
    slopes = 10 * np.array([f[0] for f in fits])
    if len(slopes) > 1:  # seeds are independent runs: their spread is the honest error
        half = stats.t.ppf(0.5 + level / 2, len(slopes) - 1) * slopes.std(ddof=1) / np.sqrt(len(slopes))
    else:
        half = stats.t.ppf(0.5 + level / 2, last - first - 1) * 10 * fits[0][1]
    final = float(np.mean([a[e <= last][-1] for e, a in curves]))
    gap = None if teacher_val is None else 100 * teacher_val - final
    return Learning(arm, len(curves), first, last, float(slopes.mean()), float(slopes.mean() - half),
                    float(slopes.mean() + half), level, final, gap)


def learning_lines(learned: list[Learning]) -> list[str]:
    """The report's section: one row per arm, then the undertrained warning before any verdict is read."""
    if not learned:
        return []
    w = learned[0]
    lines = ["## Did the students finish learning?", "",
             f"Val accuracy over the last epochs of every final seed ({w.first_epoch}–{w.last_epoch}): the slope per "
             f"10 epochs, mean over seeds with its {100 * w.level:.0f}% interval over seeds; *rising* when the "
             "interval lies above 0. A flat end at a cosine schedule's decayed learning rate does not show that more "
             "epochs would not help; the epoch budget chosen on val does.", "",
             "| arm | seeds | val at the end | slope (points / 10 epochs) | interval | below the teacher (val) | |",
             "| --- | ---: | ---: | ---: | --- | ---: | --- |"]
    for k in learned:
        gap = "–" if k.gap_to_teacher is None else f"{k.gap_to_teacher:+.1f}"
        lines.append(f"| {k.arm} | {k.n_seeds} | {k.final_val:.1f} | {k.slope:+.2f} | [{k.low:+.2f}, {k.high:+.2f}] | "
                     f"{gap} | {'**rising**' if k.rising else 'no rise shown'} |")
    rising = [k.arm for k in learned if k.rising]
    lines.append("")
    if rising:
        lines += [f"**Undertrained**: {', '.join(rising)} still rising when training stopped. The comparisons below "
                  "are about speed of learning, not about what the students can reach: a longer schedule "
                  "(`student.epochs`, or `student.epochs: auto`: the budget ladder picks it on val) answers that.", ""]
    else:
        lines += ["No arm was still rising when training stopped.", ""]
    return lines
