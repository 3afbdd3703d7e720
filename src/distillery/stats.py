"""Effect sizes: paired bootstrap of the accuracy difference distilled − baseline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Effect:
    diff: float  # percentage points
    low: float
    high: float
    verdict: str


def verdict_for(low: float, high: float) -> str:
    if low > 0:
        return "helped"
    if high < 0:
        return "hurt"
    return "no detectable effect"


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> Effect:
    """Difference of mean accuracy a − b (in points) with a bootstrap CI over test images and seeds.

    correct_a, correct_b: (seeds, images) arrays of 0/1, same images in the same order. Images are
    resampled jointly (the pairing), seeds independently per model (they are different runs).
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(correct_b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError("both models must be scored on the same images")
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        img = rng.integers(0, n, n)
        sa = rng.integers(0, a.shape[0], a.shape[0])
        sb = rng.integers(0, b.shape[0], b.shape[0])
        diffs[i] = a[np.ix_(sa, img)].mean() - b[np.ix_(sb, img)].mean()
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail]) * 100
    diff = (a.mean() - b.mean()) * 100
    return Effect(float(diff), float(low), float(high), verdict_for(low, high))
