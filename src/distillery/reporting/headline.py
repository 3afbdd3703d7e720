"""reports/headline.json: the pipeline's only DVC metrics file, a few numbers that fit `dvc exp show`.

Per comparison one cell, "Δ±half-width verdict" (points; the seed-only interval the verdict reads),
the primary comparison first, a cell ending in "*" (unsized) where the half-width is above
report.target_halfwidth (the run was not given the seeds to answer it); then each arm's test accuracy
and the teacher's (percent). The detail stays in
reports/effects.json and metrics/*.json, plain outputs.
"""

from __future__ import annotations

import math
from typing import Any

from .stats import Comparison, short_verdict


def comparison_cell(k: Comparison, min_effect: float) -> str:
    half = (k.high - k.low) / 2
    spread = f"±{half:.2f}" if math.isfinite(half) else "±∞"
    return f"{k.diff:+.2f}{spread} {short_verdict(k.verdict, min_effect)}" + ("*" if k.sized is False else "")  # * unsized


def headline(comps: list[Comparison], evaluation: dict[str, Any], arms: list[str], min_effect: float) -> dict[str, Any]:
    out: dict[str, Any] = {f"{k.arm}-{k.reference}": comparison_cell(k, min_effect) for k in comps}
    out.update({arm: round(100 * evaluation[arm]["test_acc"], 2) for arm in arms if arm in evaluation})
    if "teacher" in evaluation:
        out["teacher"] = round(100 * evaluation["teacher"]["test_acc"], 2)
    return out
