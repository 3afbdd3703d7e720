"""How many seeds each comparison needs, planned on the pilot seeds' val predictions, never on test.

The pilot (final.seeds) gives each comparison's paired per-seed differences on the val split. Their
variance has two parts (stats.paired_variance_parts): images flipping between seeds, which shrinks
with more images, and whole-model luck, which does not. The plan rescales the first from the val
split's size to the test split's (only its size is read), takes the sum as the test SD, and asks for
the fewest seeds whose simultaneous t interval (Bonferroni over the comparisons) reaches
report.target_halfwidth, capped at final.max_seeds. Only variances are used: the pilot's val *effects*
never change how many seeds run. Both arms of a comparison run the same seeds (the pairs need them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..core.arms import COMPARISONS
from ..core.config import Params
from .stats import halfwidth_at, mde, paired_variance_parts, seeds_needed, simultaneous_level, variance_at


def comparison_pairs(arms: list[str]) -> list[tuple[str, str]]:
    """The report's family (arms.COMPARISONS), where both arms ran."""
    return [(d, r) for d, r in COMPARISONS if d in arms and r in arms]


def correct_matrix(pred: pd.DataFrame, seeds: list[int]) -> np.ndarray:
    """(seeds × images) 0/1: a val predictions file (columns label, seed_<s>) scored against its labels."""
    return np.stack([(pred[f"seed_{s}"].to_numpy() == pred["label"].to_numpy()) for s in seeds]).astype(np.float64)


def plan_comparison(a: np.ndarray, b: np.ndarray, test_images: int, target: float, level: float,
                    cap: int) -> dict[str, Any]:
    parts = paired_variance_parts(a, b)
    sd_test = math.sqrt(variance_at(parts, test_images))
    needed = seeds_needed(sd_test, target, level)
    planned = max(min(needed, cap), a.shape[0])
    return {"pilot_seeds": int(a.shape[0]), "pilot_sd_val": parts["sd"], "flip_var_val": parts["flip_var"],
            "model_var_val": parts["model_var"], "predicted_sd_test": sd_test, "seeds_needed": needed,
            "seeds_planned": planned, "planned_halfwidth": halfwidth_at(sd_test, planned, level),
            "planned_mde80": mde(sd_test, planned, level)}


def plan_seeds(params: Params, val_predictions: dict[str, pd.DataFrame], test_images: int) -> dict[str, Any]:
    """The plan seed_plan.json holds: per comparison its numbers, per arm the seeds it runs after the pilot."""
    pilot, f, r = params.final.seeds, params.final, params.report
    pairs = comparison_pairs(params.arms.all)
    level = simultaneous_level(len(pairs), r.alpha)
    comparisons, totals = {}, {arm: len(pilot) for arm in params.arms.all}
    if len(pilot) >= 2:
        for arm, ref in pairs:
            c = plan_comparison(correct_matrix(val_predictions[arm], pilot), correct_matrix(val_predictions[ref], pilot),
                                test_images, r.target_halfwidth, level, f.max_seeds)
            comparisons[f"{arm}-{ref}"] = c
            for name in (arm, ref):
                totals[name] = max(totals[name], c["seeds_planned"])
    val_images = len(next(iter(val_predictions.values()))) if val_predictions else 0
    return {"target_halfwidth": r.target_halfwidth, "level": level, "family": len(pairs), "max_seeds": f.max_seeds,
            "pilot_seeds": list(pilot), "val_images": val_images, "test_images": test_images,
            "rule": "plug-in t: fewest n with t(1 - alpha/2m, n - 1) * SD / sqrt(n) <= target, SD from the pilot's "
                    "val differences with the image-flip part rescaled to the test split's size",
            "comparisons": comparisons,
            "arms": {arm: {"seeds": n, "extra_seeds": f.extra_seeds(n)} for arm, n in totals.items()}}
