"""Was the run sized to answer? Per comparison: the seed plan's numbers next to what the test split gave.

The plan (seed_plan.json) was made on the pilot's val predictions before the test split was read; the
rest is computed here from the test predictions of every seed both arms ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .inputs import ReportInputs
from .stats import (Comparison, json_ready, mde, new_image_interval, replication_halfwidth, seeds_needed,
                    verdict_stability)


@dataclass(frozen=True)
class Precision:
    comparison: str
    seeds_run: int
    sd_test: float  # SD of the per-seed paired differences on test, points
    halfwidth: float  # of the simultaneous seed-only interval (the verdict's)
    new_image_low: float  # the simultaneous interval over new seeds and new test images
    new_image_high: float
    mde80: float  # smallest true Δ ≠ 0 detected with 80 % power at these seeds and this SD (H0: Δ = 0)
    mde80_min_effect: float  # the same for "helped by more than min_effect": min_effect + mde80
    seeds_for_target: int  # seeds the test SD says ±target needs (hindsight; the plan's own number is below)
    pilot_sd_val: float | None
    seeds_needed_planned: int | None
    seeds_planned: int | None
    role: str = "family"
    replication_halfwidth: float = math.inf  # a rerun's Δ lands within Δ ± this with probability ≈ 95 %
    same_verdict: float = math.nan  # share of simulated reruns with the same verdict (this run's Δ, SD as truth)
    sd_unpaired: float | None = None  # SD of Δ with seed s of one arm against seed s+1 of the other: no CRN

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
        m = mde(sd, len(seeds), k.level)
        shifted = seeds[1:] + seeds[:1]
        unpaired = float(np.std(100 * (a.mean(1) - b.mean(1)[[seeds.index(t) for t in shifted]]), ddof=1)) \
            if len(seeds) >= 3 else None
        out.append(Precision(f"{k.arm} − {k.reference}", len(seeds), sd, (k.high - k.low) / 2, lo, hi,
                             m, inputs.params.report.min_effect + m, seeds_needed(sd, target, k.level),
                             p.get("pilot_sd_val"), p.get("seeds_needed"), p.get("seeds_planned"), k.role,
                             replication_halfwidth(sd, len(seeds)),
                             verdict_stability(k.diff, sd, len(seeds), k.level, inputs.params.report.min_effect),
                             unpaired))
    return out


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _tuning_luck(p) -> str:
    warm = (f" The studies were warm-started from the committed trials in `{p.sweep.warm_start}` (sweep.warm_start), "
            "so a rerun anywhere starts from the same settled ground and changes the winner only if one of its "
            f"{p.sweep.n_trials} new trials beats them on val.") if p.sweep.warm_start else ""
    if p.sweep.recipe == "shared":
        return (f"Neither covers tuning luck: every arm trains at the recipe {p.sweep.recipe_arm}'s study chose, which "
                "makes Δ a gap at that recipe, but another recipe or another λ/τ would move Δ itself (the arms "
                "respond to the recipe differently), and neither interval includes that." + warm)
    return ("Neither covers tuning luck: each arm's own study could have chosen other settings, and Δ moves with "
            "them (`sweep.recipe: shared` takes the recipe search out of Δ)." + warm)


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
    lines += ["| comparison | role | pilot SD (val) | seeds needed (plan) | seeds run | SD (test) | half-width | "
              "80 % MDE: Δ ≠ 0 / Δ > min_effect | seeds the test SD says ±target needs | interval over new images too |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r.comparison} | {r.role} | {_num(r.pilot_sd_val)} | {_num(r.seeds_needed_planned, 'd')} | "
                     f"{r.seeds_run} | {_num(r.sd_test)} | ±{_num(r.halfwidth)} | {_num(r.mde80)} / "
                     f"{_num(r.mde80_min_effect)} | {_num(r.seeds_for_target, 'd')} | "
                     f"[{_num(r.new_image_low, '+.1f')}, {_num(r.new_image_high, '+.1f')}] |")
    short = [r.comparison for r in rows if r.halfwidth > p.report.target_halfwidth]
    crn = [f"{r.comparison} {r.sd_test:.2f} paired by seed, {r.sd_unpaired:.2f} with seed s against s+1"
           for r in rows if r.sd_unpaired is not None]
    if crn:
        lines += ["", "Common random numbers: seed s of every arm starts from the same initial weights (where the "
                  "architectures match) and sees the same views, drop-path draws and data order, so a paired "
                  "difference holds less chance than two independent runs. SD of the per-seed test Δ: "
                  + "; ".join(crn) + ". The plain ViT has another architecture, so only the views are shared there."]
    lines += ["", "What each interval covers: the headline's interval covers seed-to-seed variance (initialisation, "
              "data order, drop-path and augmentation draws) on this fixed test split; the last column adds the "
              "sampling of test images (a two-way seeds × images model), so it says how the gap would hold on new "
              "images of the same kind. " + _tuning_luck(p) + " The 80 % MDE is the smallest true Δ these seeds would "
              "detect four times in five at the comparison's level: first for Δ ≠ 0, then for the declared question "
              "\"helped by more than min_effect\" (min_effect + MDE). Both plug in this run's SD."]
    if short:
        lines += ["", f"**Not sized to answer at ±{p.report.target_halfwidth:g}:** {', '.join(short)}. The seeds "
                  "column on the right is what this run's own test SD says a run would need; raise "
                  "`final.max_seeds` and `final.extend: all` (or use a profile planned for it) rather than read "
                  "these verdicts as nulls."]
    return lines + [""]


def reproducibility_lines(comps: list[Comparison], rows: list[Precision]) -> list[str]:
    """What a rerun on another machine should show: the same verdicts (with a stated probability) and a Δ
    within the replication interval; `make reproduce` checks both against a fresh clone's run."""
    lines = ["## Reproducibility: what a rerun anywhere should give", "",
             "Another CPU, thread count or torch version rounds differently and so trains other models, as another "
             "draw of seeds would (on a GPU, bf16 autocast and non-deterministic kernels do the same); bitwise "
             "equality holds only on the same machine type. What should hold on any machine is the verdict: the "
             "table gives the share of simulated reruns (this run's Δ and SD taken as the truth, n normal per-seed "
             "differences, the same interval rule) that reach the same verdict, and the interval a rerun's Δ should "
             "land in with about 95 % probability (Δ ± t·SD·√(2/n)). `make reproduce` reruns the committed params "
             "on a fresh clone and compares both (docs/reproducibility.md).", "",
             "| comparison | role | verdict | P(same verdict on a rerun) | a rerun's Δ (≈95 %) |", "| --- | --- | --- | ---: | --- |"]
    by_name = {r.comparison: r for r in rows}
    for k in comps:
        r = by_name.get(f"{k.arm} − {k.reference}")
        if r is None:
            continue
        same = "–" if k.verdict.startswith("not tested") or not math.isfinite(r.same_verdict) else f"{100 * r.same_verdict:.0f} %"
        lines.append(f"| {r.comparison} | {k.role} | {k.verdict} | {same} | "
                     f"[{_num(k.diff - r.replication_halfwidth, '+.1f')}, {_num(k.diff + r.replication_halfwidth, '+.1f')}] |")
    return lines + ["", "The machine line at the top lists every machine a stage of this report ran on.", ""]
