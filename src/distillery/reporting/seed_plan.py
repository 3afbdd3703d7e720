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


def comparison_levels(params: Params, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """Each comparison's interval level: the primary at 1 − α, the secondaries (or, without a primary, every
    comparison) simultaneous at 1 − α/m over their family (stats.compare_arms)."""
    primary, alpha = params.report.primary_pair, params.report.alpha
    rest = [k for k in pairs if k != primary]
    return {k: (1 - alpha if k == primary else simultaneous_level(len(rest), alpha)) for k in pairs}


def plan_seeds(params: Params, val_predictions: dict[str, pd.DataFrame], test_images: int) -> dict[str, Any]:
    """The plan seed_plan.json holds: per comparison its numbers, per arm the seeds it runs after the pilot.

    The primary's arms run at least final.primary_seeds (declared before the run); a comparison the plan
    may extend (final.extend) raises its arms to the seeds it needs, up to final.max_seeds; the others keep
    the pilot and the report states the precision they reached."""
    pilot, f, r = params.final.seeds, params.final, params.report
    pairs = comparison_pairs(params.arms.all)
    levels = comparison_levels(params, pairs)
    primary = r.primary_pair if r.primary_pair in pairs else None
    comparisons, totals = {}, {arm: len(pilot) for arm in params.arms.all}
    for name in primary or ():
        totals[name] = max(totals[name], min(f.primary_seeds or 0, f.max_seeds))
    if len(pilot) >= 2:
        for arm, ref in pairs:
            c = plan_comparison(correct_matrix(val_predictions[arm], pilot), correct_matrix(val_predictions[ref], pilot),
                                test_images, r.target_halfwidth, levels[(arm, ref)], f.max_seeds)
            c["role"] = "primary" if (arm, ref) == primary else ("secondary" if primary else "family")
            c["unpaired_sd_val"] = unpaired_sd(val_predictions[arm], val_predictions[ref], pilot)
            if f.extend == "all" or (arm, ref) == primary:
                for name in (arm, ref):
                    totals[name] = max(totals[name], c["seeds_planned"])
            comparisons[(arm, ref)] = c
    for (arm, ref), c in comparisons.items():  # what each comparison gets once every arm's total is known
        c["seeds_planned"] = n = min(totals[arm], totals[ref])
        c["planned_halfwidth"] = halfwidth_at(c["predicted_sd_test"], n, levels[(arm, ref)])
        c["planned_mde80"] = mde(c["predicted_sd_test"], n, levels[(arm, ref)])
    comparisons = {f"{a}-{b}": c for (a, b), c in comparisons.items()}
    val_images = len(next(iter(val_predictions.values()))) if val_predictions else 0
    return {"target_halfwidth": r.target_halfwidth, "levels": {f"{a}-{b}": lv for (a, b), lv in levels.items()},
            "primary": r.primary if primary else None, "family": len(pairs), "max_seeds": f.max_seeds,
            "primary_seeds": f.primary_seeds, "extend": f.extend,
            "pilot_seeds": list(pilot), "val_images": val_images, "test_images": test_images,
            "rule": "plug-in t: fewest n with t(level, n - 1) * SD / sqrt(n) <= target, SD from the pilot's "
                    "val differences with the image-flip part rescaled to the test split's size; the primary's "
                    "arms run at least final.primary_seeds",
            "comparisons": comparisons,
            "arms": {arm: {"seeds": n, "extra_seeds": f.extra_seeds(n)} for arm, n in totals.items()}}


def unpaired_sd(pred_a: pd.DataFrame, pred_b: pd.DataFrame, seeds: list[int]) -> float | None:
    """The SD of val Δ when seed s of one arm is paired with seed s+1 of the other (cyclically): what the
    paired SD would be without common random numbers (same initial weights, views and drop-path draws per
    seed). Needs ≥ 3 seeds."""
    if len(seeds) < 3:
        return None
    acc = lambda pred, s: 100.0 * float((pred[f"seed_{s}"] == pred["label"]).mean())  # noqa: E731
    shifted = seeds[1:] + seeds[:1]
    return float(np.std([acc(pred_a, s) - acc(pred_b, t) for s, t in zip(seeds, shifted)], ddof=1))
