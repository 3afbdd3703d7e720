"""The report: reports/report.md, reports/effects.json and reports/figures/*.png.

Built only from files the pipeline wrote; imports no torch. The headline compares the arms on the
test split, each at its chosen configuration: under `sweep.recipe: shared` all at one recipe (the
distilled arms with their own tuned λ, τ), under `per_arm` each at its own study's best (best vs best).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.search_spaces import (has_study, importance_min_trials, is_fixed, own_space, recipe_space, shares_recipe,
                                  study_budget)
from ..core.budget import budget_line
from ..core.config import ChoiceSpec, Params
from ..core.files import write_json, write_text
from ..core.paths import Layout
from . import figures
from .convergence import Learning, learning_lines, learning_of
from .headline import headline
from .inputs import ReportInputs, load_inputs
from .precision import precision_lines, precision_of, reproducibility_lines
from .seed_plan import comparison_pairs
from .stats import NOT_TESTED, Comparison, compare_arms
from .summary_run import log_summary
from .teacher_check import TeacherCheck, check_teacher, labels_in_disguise, signal_lines, teacher_check_lines
from .transfer_lines import transfer_lines

FIGURES = {
    "effects.png": (None, "Each distilled arm minus each reference on the test split: Δ with its simultaneous CI; "
                          "the grey band is ±min_effect, declared in params before the run."),
    "delta_val.png": (figures.fig_delta_val, "Δ val accuracy per epoch (distilled − reference, paired by seed): "
                                             "is the effect still moving when training stops? The band is a "
                                             "pointwise 95% interval per epoch (not simultaneous over epochs), on "
                                             "the val split that also chose the configurations: optimistic, and "
                                             "no evidence by itself."),
    "learning_curves.png": (figures.fig_learning_curves, "Val accuracy and val cross-entropy (the inference rule "
                                                         "against the true labels, the same quantity for every "
                                                         "model) per epoch."),
    "sweeps.png": (figures.fig_sweeps, "Each arm's study: completed trials' objective, pruned trials as crosses on the "
                                       "axis (with the epochs they ran; they have no objective), "
                                       "the best trial, and the final seeds' val objective."),
    "tuning_curves.png": (figures.fig_tuning_curves,
                          "Each study's tuning curve: the expected best val objective of k of its completed trials "
                          "drawn at random (Dodge et al. 2019, band ±1 SD), and the best found so far in the order "
                          "the sampler ran them. Still rising at the last trial: the study had not saturated."),
    "heads.png": (figures.fig_heads, "Class head, distillation head and their average for the two-token arms."),
    "agreement.png": (figures.fig_agreement, "How often each arm predicts the teacher's class on the test split."),
    "token_cosine.png": (figures.fig_token_cosine, "Cosine similarity of the class and distillation tokens by layer."),
    "per_class.png": (figures.fig_per_class, "Per-class test accuracy, mean over seeds."),
}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _pct_std(ev: dict[str, Any], key: str) -> str:
    if key not in ev:
        return "–"
    std = ev.get(f"{key}_std")
    return f"{100 * ev[key]:.1f} ± {100 * std:.1f}" if std is not None else f"{100 * ev[key]:.1f}"


def _opt(hp: dict[str, float], key: str) -> str:
    return f"{hp[key]:.2f}" if key in hp else "–"


def _spec(spec) -> str:
    if isinstance(spec, ChoiceSpec):
        return "{" + ", ".join(f"{c:g}" for c in spec.choices) + "}"
    if is_fixed(spec):
        return f"{spec.low:g} (fixed)"
    return f"[{spec.low:g}, {spec.high:g}]" + (" log" if spec.log else "")


def comparisons_of(inputs: ReportInputs) -> list[Comparison]:
    p = inputs.params
    return compare_arms(inputs.per_seed_test_acc(), comparison_pairs(inputs.arms), p.report.min_effect, p.report.alpha,
                        p.report.primary_pair, p.report.target_halfwidth)


def teacher_check_of(inputs: ReportInputs) -> TeacherCheck | None:
    """The weak-teacher check (teacher_check.py); None when no distilled arm or no reference ran."""
    return check_teacher(inputs.teacher["val_acc"], inputs.final_val_acc(), inputs.params.report.weak_teacher_ratio)


def _machines(inputs: ReportInputs) -> list[str]:
    seen = []
    for m in [inputs.teacher.get("machine"), *(f.get("machine") for f in inputs.finals.values()),
              inputs.throughput.get("machine")]:
        if m:
            isa = f", {m['cpu_isa']} kernels" if m.get("cpu_isa") else ""
            text = (f"{m['cpu']} ({m['cpu_count']} logical CPUs{isa}), {m.get('gpu') or 'no GPU'}, torch {m['torch']} "
                    f"with {m['torch_threads']} threads, Python {m['python']}, {m['os']}"
                    + (f", {m['processes']} processes per run (DDP)" if m.get("processes", 1) > 1 else ""))
            if text not in seen:
                seen.append(text)
    return seen


def _throughput_note(throughput: dict[str, Any]) -> str:
    rounds = throughput.get("images_per_s_rounds")
    if not rounds:
        return "images/s: one model per arm, median of timed passes over the test split."
    spread = ", ".join(f"{name} {min(r):,.0f}–{max(r):,.0f}" for name, r in rounds.items())
    return (f"images/s: median of {throughput['rounds']} rounds in which every model (one per arm) makes one pass "
            f"over the test split, taking turns, so a drift in the machine's speed hits them alike; range over "
            f"rounds: {spread}. Differences inside those ranges are timing noise.")


def _tuning_lines(inputs: ReportInputs) -> list[str]:
    """Whether each study saturated (the last trial's expected gain) and its importances, if it has enough trials."""
    gains, importances = [], []
    for arm in [a for a in inputs.arms if a in inputs.trials]:
        k, mean, _ = figures.tuning_curve(inputs.trials[arm])
        if len(k) >= 2:
            gains.append(f"{arm} {100 * (mean[-1] - mean[-2]):+.2f}")
        searched = len(own_space(inputs.params, arm)) + (0 if shares_recipe(inputs.params, arm) else
                                                          len(recipe_space(inputs.params)))
        if imp := inputs.importance.get(arm):
            importances.append(f"{arm}: " + ", ".join(f"{n} {v:.2f}" for n, v in imp.items()))
        elif searched == 1:
            importances.append(f"{arm}: one searched knob, nothing to rank")
        elif len(k):
            importances.append(f"{arm}: not computed ({len(k)} completed trials; fANOVA needs "
                               f"{importance_min_trials(searched)} for {searched} searched knobs)")
    lines = []
    if gains:
        lines += ["Expected gain of the last trial over one fewer (points of val objective; tuning_curves.png): "
                  + ", ".join(gains) + ". This is the study's own trials reshuffled: it shows how the expected best "
                  "moved with the last trial, not that more trials would find nothing (with few trials it is biased "
                  "low, Tang et al. 2020).", ""]
    if importances:
        lines += ["Knob importances (fANOVA): " + "; ".join(importances) + ".", ""]
    return lines


def _new_epochs(trials) -> int:
    fresh = trials[~trials["warm_start"].astype(str).str.lower().eq("true")] if "warm_start" in trials else trials
    return int(fresh["epochs_run"].sum())


def _warm_lines(inputs: ReportInputs) -> list[str]:
    """Which studies started from committed trials (sweep.warm_start), and whether the winner is one of them."""
    p = inputs.params
    if not p.sweep.warm_start:
        return ["Studies started cold (`sweep.warm_start: null`).", ""]
    parts = []
    for arm in inputs.arms:
        b, t = inputs.best.get(arm), inputs.trials.get(arm)
        if b is None or b.trial is None:
            continue
        won = ""
        if t is not None and "warm_start" in t and b.n_warm:
            row = t[t["number"] == b.trial]
            won = " (winner: a committed trial)" if len(row) and str(row["warm_start"].iloc[0]).lower() == "true" \
                else " (winner: a new trial)"
        parts.append(f"{arm} {b.n_warm} committed + {b.n_trials - b.n_warm} new{won}" if b.n_warm
                     else f"{arm} cold ({b.n_trials} new)")
    return [f"Warm start (`sweep.warm_start: {p.sweep.warm_start}`, trials of a larger study run once at this "
            "budget, on val): " + "; ".join(parts) + ". A study whose committed trials ran under other conditions "
            "(data, epochs, recipe) starts cold; the sweep stage's line says why.", ""]


def _family_sentence(p: Params, comps: list[Comparison]) -> str:
    """How the family-wise error is held: serial gatekeeping behind a primary, or one Holm family."""
    primary = [k for k in comps if k.role == "primary"]
    rest = [k for k in comps if k.role != "primary"]
    if not primary:
        return (f"Across the {len(comps)} comparisons the family-wise error is held at α = {p.report.alpha:g}: the "
                f"intervals are simultaneous (Bonferroni, each at 1 − α/{len(comps)}) and the p-values of Δ = 0 "
                "Holm-adjusted.")
    k = primary[0]
    gate = "passed" if rest and rest[0].verdict != NOT_TESTED else "did not pass"
    return (f"**Primary comparison** (declared in `report.primary` before the run): {k.arm} − {k.reference}, tested "
            f"alone at the full α = {p.report.alpha:g} (its CI at {100 * k.level:g} %, its p unadjusted). The "
            f"{len(rest)} secondary comparisons are tested only if the primary rejects Δ = 0 (serial gatekeeping; "
            f"it {gate}): one Holm family at α, intervals simultaneous at 1 − α/{max(len(rest), 1)}. The family-wise "
            "error of every helped/hurt claim is held at α. Secondaries marked unsized were not given the seeds "
            "±target needs: their verdicts are descriptive, not findings.") if rest else (
            f"**Primary comparison** (`report.primary`): {k.arm} − {k.reference}, at α = {p.report.alpha:g}.")


def _design_sentence(p: Params) -> str:
    owner = p.sweep.recipe_arm
    if p.sweep.recipe == "shared":
        return (f"Every arm trains at one recipe (learning rate, weight decay, mixing, drop path), the winner of "
                f"{owner}'s study; the distilled arms tuned only their own λ (and τ) at it, with the same trial "
                "budget, and the other arms have no knob of their own. So Δ does not depend on which arm's recipe "
                "search was luckier (DeiT's design); `sweep.recipe: per_arm` gives best vs best.")
    return ("Each arm was tuned by its own study with the same budget (best vs best): Δ includes the luck of "
            "each arm's recipe search, which the interval below does not cover; `sweep.recipe: shared` removes it.")


def render_markdown(inputs: ReportInputs, comps: list[Comparison], figs: list[str]) -> str:
    """The report, one section after another (each section's function says what it shows)."""
    lines = _data_section(inputs)
    lines += learning_lines(learning_of_arms(inputs))  # before any verdict: were the students done learning?
    lines += _headline_section(inputs, comps)
    lines += _accuracy_section(inputs)
    lines += _tuning_section(inputs)
    lines += _winners_section(inputs)
    lines += _figures_section(inputs, comps, figs)
    lines += ["---", "Generated by `dvc repro` (stage `report`); per-run details are in MLflow (`mlflow ui`)."]
    return "\n".join(lines) + "\n"


def _n_seeds(inputs: ReportInputs) -> str:
    counts = sorted({len(inputs.seeds_of(a)) for a in inputs.arms if a in inputs.evaluation})
    return "–".join(map(str, counts)) if counts else str(len(inputs.params.final.seeds))


def _data_section(inputs: ReportInputs) -> list[str]:
    """The title, the data, the machine and the epoch budget."""
    p, ds = inputs.params, inputs.data_summary
    c = ds["counts"]
    lines = [f"# {p.report.title}", "",
             f"Data: **{ds['source']}**, {ds['num_classes']} classes, {ds['channels']}×{ds['image_size']}×"
             f"{ds['image_size']} px" + (f" (resized from {ds['median_short_side']} px, the images' median short side)"
                                        if ds.get("median_short_side", ds["image_size"]) != ds["image_size"] else "")
             + f", train/val/test = {c['train']}/{c['val']}/{c['test']} images"
             + (f" (split seed {ds['split_seed']})" if "split_seed" in ds else "")
             + (f", {ds['num_skipped']} file(s) skipped (listed below)" if ds.get("num_skipped") else "") + ".",
             f"Machine: {'; '.join(_machines(inputs)) or 'not recorded'}.", ""]
    if inputs.budget is not None:
        lines += [f"Epoch budget: {budget_line(inputs.budget)}.", ""]
    return lines


def _headline_section(inputs: ReportInputs, comps: list[Comparison]) -> list[str]:
    """The declared comparisons: Δ, intervals and verdicts, their precision, and what the teacher passed on."""
    p, n_seeds = inputs.params, _n_seeds(inputs)
    lines: list[str] = []
    shared = p.sweep.recipe == "shared"
    lines += [f"## Headline ({'same recipe' if shared else 'best vs best'}, test split)", ""]
    if comps:
        lines += [f"{_design_sentence(p)} Each arm's configuration was then retrained with {n_seeds} seeds. Δ is the "
                  "mean over seeds of the paired per-seed difference in test accuracy; the CI is a t-interval over "
                  "those differences (n = seeds both arms have). " + _family_sentence(p, comps) + " Declared before "
                  f"the run: an effect matters if it exceeds **{p.report.min_effect:g} point"
                  f"{'' if p.report.min_effect == 1 else 's'}** (`report.min_effect`), and a comparison is sized when "
                  f"its half-width is at most ±{p.report.target_halfwidth:g} (`report.target_halfwidth`).", "",
                  "| comparison | role | n | Δ (points) | CI | CI level | p | verdict |",
                  "| --- | --- | ---: | ---: | --- | ---: | ---: | --- |"]
        for k in comps:
            ci = f"[{k.low:+.1f}, {k.high:+.1f}]" if np.isfinite(k.low) else "–"
            unsized = "" if k.sized is not False else " (unsized)"
            verdict = f"**{k.verdict}**" if k.verdict != NOT_TESTED and (k.role == "primary" or k.sized is not False) else k.verdict
            lines.append(f"| {k.arm} − {k.reference} | {k.role} | {k.n_seeds} | {k.diff:+.1f} | {ci} | "
                         f"{100 * k.level:.2f}% | {k.p_holm:.3f} | {verdict}{unsized} |")
        lines += ["", *precision_lines(inputs, precision_of(inputs, comps))]
        lines += [*teacher_check_lines(teacher_check_of(inputs))]
        lines += [f"Soft distillation uses KL normalisation `{p.distill.soft.kl_reduction}` "
                  "(`batchmean`: textbook KD, as timm; `numel`: the DeiT reference code, C times smaller). "
                  "`control` is the distilled architecture without a teacher (both tokens learn the labels): "
                  "distilled − control isolates the teacher's signal from the extra token and the averaged heads. "
                  + ("`fake` trains with the soft loss against a fake teacher whose logits are the smoothed labels: "
                     "soft − fake is what the teacher knows beyond the labels, apart from what the loss's shape does."
                     if "fake" in inputs.arms else "The `fake` arm (soft − fake: what the teacher knows beyond the "
                     "labels) did not run here: `make profile NAME=ablations` adds it."), ""]
    else:
        lines += ["No distilled arm and reference both ran: nothing to compare.", ""]
    return lines


def _accuracy_section(inputs: ReportInputs) -> list[str]:
    """Each arm's test accuracy by head, its agreement with the teacher and its inference speed."""
    ev, n_seeds = inputs.evaluation, _n_seeds(inputs)
    lines = ["## Test accuracy per arm", "", f"Mean ± std over {n_seeds} seeds; the teacher is one model.", "",
              "| model | params | class head | dist head | inference (avg of heads) | agreement with teacher | images/s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ["teacher", *inputs.arms]:
        if name not in ev:
            continue
        m = ev[name]
        lines.append(f"| {figures.label(name)} | {m['num_params'] / 1e6:.2f} M | {_pct_std(m, 'test_acc_cls')} | "
                     f"{_pct_std(m, 'test_acc_dist')} | {_pct_std(m, 'test_acc_avg')} | "
                     f"{_pct(m.get('teacher_agreement'))} | {inputs.throughput['images_per_s'].get(name, float('nan')):,.0f} |")
    lines += ["", _throughput_note(inputs.throughput)]
    lines += ["", *_teacher_passes_on(inputs)]
    return lines


def _tuning_section(inputs: ReportInputs) -> list[str]:
    """The tuning budget every arm had, and the knobs each study searched."""
    p = inputs.params
    budget = study_budget(p, inputs.arms[0])
    shared = p.sweep.recipe == "shared"
    studied = [arm for arm in inputs.arms if has_study(p, arm)]
    unstudied = [arm for arm in inputs.arms if arm not in studied]
    lines = ["", "## Tuning budget (identical for every arm)", "",
              f"{budget['n_trials']} new trials per warm-started study, {max(budget['n_trials'], budget['cold_trials'])} "
              f"per study that starts cold ({', '.join(studied)}"
              + (f"; {', '.join(unstudied)} train{'s' if len(unstudied) == 1 else ''} at {p.sweep.recipe_arm}'s recipe "
                 "with nothing of its own to search" if unstudied else "") + f"), each trained for the full {budget['epochs_per_trial']} epochs "
              f"of the final runs ({budget['warmup_epochs']} warm-up, cosine) unless pruned; pruner "
              f"`{budget['pruner']}` (reduction factor {budget['reduction_factor']}), never before warm-up ends; "
              f"TPE sampler seeded with {budget['sampler_seed']}, {budget['startup_trials']} random start-up trials; "
              f"objective: mean val accuracy of the last {budget['objective_epochs']} epochs."
              + (f" (`sweep.pruner: {p.sweep.pruner}` was asked for: below {p.sweep.reduction_factor}² trials it would "
                 "decide by trial order, not by settings, so the studies do not prune.)"
                 if budget["pruner"] != p.sweep.pruner else ""),
              "", *_warm_lines(inputs), "Realised training epochs per arm in this run (its new trials, pruned ones "
              "included): " + (", ".join(f"{arm} {_new_epochs(inputs.trials[arm])}" for arm in inputs.arms
                                         if arm in inputs.trials) or "not recorded") + ".", "",
              *_tuning_lines(inputs), "| knob | searched over |", "| --- | --- |"]
    for arm in inputs.arms:
        for k, v in own_space(p, arm).items():
            lines.append(f"| {k} ({arm} only) | {_spec(v)} |")
    whose = f"{p.sweep.recipe_arm}'s study; every arm trains at its winner" if shared else "every arm"
    for k, v in recipe_space(p).items():
        lines.append(f"| {k} ({whose}) | {_spec(v)} |")
    return lines


def _winners_section(inputs: ReportInputs) -> list[str]:
    """Each arm's winning recipe, and whether its best trial's val estimate held over the final seeds."""
    p = inputs.params
    lines = ["", "## Winning recipe per arm, and whether the sweep's estimate held", "",
              "Best trial: its val objective at seed " f"{p.seed}" ". Final: the same configuration retrained with "
              "every final seed (mean ± std of the same val objective). A best trial well above the final mean is "
              "the winner's curse of a small study.", "",
              "| arm | trials (done / pruned) | best trial | lr | weight decay | mixing | drop path | λ | τ | "
              "best trial val | final val |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for arm in inputs.arms:
        b, f = inputs.best[arm], inputs.finals[arm]
        hp = b.hparams
        finals = np.array([s["objective"] for s in f["per_seed"].values()])
        std = f" ± {100 * finals.std(ddof=1):.1f}" if len(finals) > 1 else ""
        trial = f"#{b.trial}" if b.trial is not None else f"{b.recipe_from}'s"
        lines.append(f"| {arm} | {b.n_complete} / {b.n_pruned} | {trial} | {hp['lr']:.2g} | {hp['weight_decay']:.2g} | "
                     f"{hp['mixing']:g} | {hp['drop_path']:.2f} | {_opt(hp, 'alpha')} | {_opt(hp, 'tau')} | {_pct(b.objective)} | {100 * finals.mean():.1f}{std} |")
    lines += ["", f"Teacher (`{p.teacher.model}`): val accuracy {_pct(inputs.teacher['val_acc'])}%.", ""]
    return lines


def _figures_section(inputs: ReportInputs, comps: list[Comparison], figs: list[str]) -> list[str]:
    """The figures, what a rerun elsewhere must reproduce, and the skipped input files."""
    lines = ["## Figures", ""]
    for f in figs:
        lines += [f"![{f}](figures/{f})", "", f"*{FIGURES[f][1]}*", ""]
    lines += reproducibility_lines(comps, precision_of(inputs, comps))
    if inputs.skipped:
        lines += ["## Skipped input files", "", "| file | reason |", "| --- | --- |"]
        lines += [f"| {s['file']} | {s['reason']} |" for s in inputs.skipped[:50]]
        lines.append("")
    return lines


def learning_of_arms(inputs: ReportInputs) -> list[Learning]:
    """Every arm's end-of-training slope on val (convergence.py), against the teacher's val accuracy."""
    teacher_val = inputs.teacher.get("val_acc")
    found = (learning_of(arm, inputs.histories[arm], teacher_val) for arm in inputs.arms if arm in inputs.histories)
    return [k for k in found if k is not None]


def _teacher_passes_on(inputs: ReportInputs) -> list[str]:
    """The teacher's signal beyond the labels and each arm's fidelity: measured before a null is explained."""
    t = inputs.transfer or {}
    body = [*signal_lines(t.get("teacher_signal"), inputs.arms, inputs.params.report.min_teacher_signal),
            *transfer_lines(t, inputs.classes, inputs.arms)]
    return ["## What the teacher passes on", "", *body] if body else []


def build_report(layout: Layout, params: Params) -> Path:
    inputs = load_inputs(layout, params)
    out = layout.reports
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    comps = comparisons_of(inputs)
    precision = {r.comparison: r.as_dict() for r in precision_of(inputs, comps)}
    figures.fig_effects(comps, params.report.min_effect, fig_dir / "effects.png", params.report.dpi)
    for name, (fn, _) in FIGURES.items():
        if fn is not None:
            fn(inputs, fig_dir / name, params.report.dpi)
    md = out / "report.md"
    write_text(md, render_markdown(inputs, comps, list(FIGURES)))
    write_json(out / "effects.json", {
        "min_effect_points": params.report.min_effect, "family_alpha": params.report.alpha,
        "kl_reduction": params.distill.soft.kl_reduction, "target_halfwidth": params.report.target_halfwidth,
        "primary": next((f"{k.arm}-{k.reference}" for k in comps if k.role == "primary"), None),
        "n_seeds": {arm: len(inputs.seeds_of(arm)) for arm in inputs.arms},
        "comparisons": {f"{k.arm}-{k.reference}": {**k.as_dict(), "precision": precision.get(f"{k.arm} − {k.reference}")}
                        for k in comps},
        "teacher_check": check.as_dict() if (check := teacher_check_of(inputs)) is not None else None,
        "teacher_signal": (inputs.transfer or {}).get("teacher_signal"),
        "labels_in_disguise": labels_in_disguise((inputs.transfer or {}).get("teacher_signal"), inputs.arms,
                                                 params.report.min_teacher_signal),
        "arms": {arm: {"test_acc": inputs.evaluation[arm]["test_acc"], "hparams": inputs.best[arm].hparams}
                 for arm in inputs.arms},
    })
    # in this order, not sorted: dvc exp show keeps the first columns when it must collapse some
    write_text(out / "headline.json", json.dumps(headline(comps, inputs.evaluation, inputs.arms,
                                                          params.report.min_effect), indent=2, ensure_ascii=False) + "\n")
    print(log_summary(layout, params, comps, inputs.evaluation, inputs.arms,
                      [md, out / "headline.json", out / "effects.json", fig_dir]))
    return md
