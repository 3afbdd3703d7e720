"""Was the run sized to answer? Per comparison: the seed plan's numbers next to what the test split gave.

The plan (seed_plan.json) was made on the pilot's val predictions before the test split was read; the
rest is computed here from the test predictions of every seed both arms ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .inputs import ReportInputs
from .stats import Comparison, json_ready, mde, new_image_interval, seeds_needed


@dataclass(frozen=True)
class Precision:
    comparison: str
    seeds_run: int
    sd_test: float  # SD of the per-seed paired differences on test, points
    halfwidth: float  # of the simultaneous seed-only interval (the verdict's)
    new_image_low: float  # the simultaneous interval over new seeds and new test images
    new_image_high: float
    mde80: float  # smallest true Δ detected with 80 % power at these seeds and this SD
    seeds_for_target: int  # seeds the test SD says ±target needs (hindsight; the plan's own number is below)
    pilot_sd_val: float | None
    seeds_needed_planned: int | None
    seeds_planned: int | None

    def as_dict(self) -> dict:
        return json_ready(self)


def precision_of(inputs: ReportInputs, comps: list[Comparison]) -> list[Precision]:
    plan = (inputs.seed_plan or {}).get("comparisons", {})
    target = inputs.params.report.target_halfwidth
    out = []
    for k in comps:
        seeds = sorted(set(inputs.seeds_of(k.arm)) & set(inputs.seeds_of(k.reference)))
        if len(seeds) < 2:  # no variance to speak of (or no test predictions to read)
            continue
        a, b = inputs.test_correct(k.arm, seeds), inputs.test_correct(k.reference, seeds)
        diffs = 100 * (a.mean(1) - b.mean(1))
        sd = float(diffs.std(ddof=1))
        _, lo, hi = new_image_interval(a, b, k.level)
        p = plan.get(f"{k.arm}-{k.reference}", {})
        out.append(Precision(f"{k.arm} − {k.reference}", len(seeds), sd, (k.high - k.low) / 2, lo, hi,
                             mde(sd, len(seeds), k.level), seeds_needed(sd, target, k.level),
                             p.get("pilot_sd_val"), p.get("seeds_needed"), p.get("seeds_planned")))
    return out


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _tuning_luck(p) -> str:
    if p.sweep.recipe == "shared":
        return (f"Tuning luck: every arm trains at the recipe {p.sweep.recipe_arm}'s study chose, so the luck of "
                "that search is on both sides of Δ and cancels (it makes Δ a gap at that recipe); the luck of a "
                "distilled arm's own λ/τ search is not covered by either interval.")
    return ("Neither covers tuning luck: each arm's own study could have chosen other settings, and Δ moves with "
            "them (`sweep.recipe: shared` takes the recipe search out of Δ).")


def precision_lines(inputs: ReportInputs, rows: list[Precision]) -> list[str]:
    p = inputs.params
    plan = inputs.seed_plan
    if not rows:
        return []
    lines = ["## Was the run sized to answer?", ""]
    if plan:
        lines += [f"Planned before the test split was read: the pilot's {len(plan['pilot_seeds'])} seeds "
                  f"({', '.join(map(str, plan['pilot_seeds']))}) on the val split ({plan['val_images']} images) gave "
                  f"each comparison's SD, its image-flip part rescaled to the test split's {plan['test_images']} images; "
                  f"then the fewest seeds for a simultaneous half-width of ±{plan['target_halfwidth']:g} points "
                  f"(`report.target_halfwidth`), capped at `final.max_seeds` = {plan['max_seeds']}. Rule: {plan['rule']}.",
                  ""]
    lines += ["| comparison | pilot SD (val) | seeds needed (plan) | seeds run | SD (test) | half-width | "
              "80 % MDE | seeds the test SD says ±target needs | interval over new images too |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r.comparison} | {_num(r.pilot_sd_val)} | {_num(r.seeds_needed_planned, 'd')} | {r.seeds_run} | "
                     f"{_num(r.sd_test)} | ±{_num(r.halfwidth)} | {_num(r.mde80)} | {_num(r.seeds_for_target, 'd')} | "
                     f"[{_num(r.new_image_low, '+.1f')}, {_num(r.new_image_high, '+.1f')}] |")
    short = [r.comparison for r in rows if r.halfwidth > p.report.target_halfwidth]
    lines += ["", "What each interval covers: the headline's interval covers seed-to-seed variance (initialisation, "
              "data order, drop-path and augmentation draws) on this fixed test split; the last column adds the "
              "sampling of test images (a two-way seeds × images model), so it says how the gap would hold on new "
              "images of the same kind. " + _tuning_luck(p) + " The 80 % MDE is the smallest true Δ these seeds would "
              "detect four times in five at the simultaneous level."]
    if short:
        lines += ["", f"**Not sized to answer at ±{p.report.target_halfwidth:g}:** {', '.join(short)}. The seeds "
                  "column on the right is what this run's own test SD says a run would need; raise "
                  "`final.max_seeds` (or use a profile planned for it) rather than read these verdicts as nulls."]
    return lines + [""]
