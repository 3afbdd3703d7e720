"""The report's figures: one function per PNG, each reading only ReportInputs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats as st  # noqa: E402

from ..core.arms import ARMS, REFERENCES  # noqa: E402
from ..core.files import atomic_path  # noqa: E402
from .inputs import ReportInputs, seed_columns  # noqa: E402
from .stats import Comparison, expected_best  # noqa: E402

COLORS = {"teacher": "#444444", "none": "#1f77b4", "control": "#9467bd", "soft": "#ff7f0e", "hard": "#2ca02c",
          "fake": "#8c564b"}


def label(name: str) -> str:
    return "CNN teacher" if name == "teacher" else f"{name}: {ARMS[name].label}"


def _save(fig, path: Path, dpi: int) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


def _curves(runs: list[list[dict[str, float]]], key: str) -> tuple[np.ndarray, np.ndarray]:
    length = min(len(r) for r in runs)
    return (np.array([row["epoch"] for row in runs[0][:length]]),
            np.array([[row.get(key, np.nan) for row in r[:length]] for r in runs]))


def fig_effects(comparisons: list[Comparison], min_effect: float, path: Path, dpi: int) -> None:
    """Forest plot: each comparison's Δ with its simultaneous (Bonferroni) CI against the declared minimum effect."""
    fig, ax = plt.subplots(figsize=(7, 0.6 * max(2, len(comparisons)) + 1.2))
    unit = "point" if min_effect == 1 else "points"
    ax.axvspan(-min_effect, min_effect, color="gray", alpha=0.15, label=f"±min_effect ({min_effect:g} {unit})")
    ax.axvline(0, color="black", lw=0.8)
    for i, c in enumerate(comparisons):
        lo = c.low if np.isfinite(c.low) else c.diff
        hi = c.high if np.isfinite(c.high) else c.diff
        ax.errorbar(c.diff, i, xerr=[[c.diff - lo], [hi - c.diff]], fmt="o", color=COLORS[c.arm], capsize=4)
    ax.set_yticks(range(len(comparisons)))
    ax.set_yticklabels([f"{c.arm} − {c.reference}" for c in comparisons])
    ax.invert_yaxis()
    ax.set(xlabel="Δ test accuracy (points), simultaneous CI", title="Effect of each arm vs its references")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path, dpi)


def fig_delta_val(inputs: ReportInputs, path: Path, dpi: int) -> None:
    """Δ val accuracy per epoch, distilled arm − reference, paired by seed; band: 95% t-interval over seeds."""
    refs = [r for r in REFERENCES if inputs.histories.get(r)]
    distilled = [a for a in inputs.arms if ARMS[a].distils and inputs.histories.get(a)]
    fig, axes = plt.subplots(1, max(1, len(refs)), figsize=(6 * max(1, len(refs)), 3.8), squeeze=False)
    for ax, ref in zip(axes[0], refs):
        for arm in distilled:
            seeds = sorted(set(inputs.histories[arm]) & set(inputs.histories[ref]))  # paired by seed
            ep, a = _curves([inputs.histories[arm][s] for s in seeds], "val_acc")
            _, b = _curves([inputs.histories[ref][s] for s in seeds], "val_acc")
            n = len(seeds)
            d = 100 * (a - b)
            mean = d.mean(0)
            ax.plot(ep, mean, color=COLORS[arm], label=f"{arm} − {ref}")
            if n > 1:
                half = st.t.ppf(0.975, n - 1) * d.std(0, ddof=1) / np.sqrt(n)
                ax.fill_between(ep, mean - half, mean + half, color=COLORS[arm], alpha=0.2)
        ax.axhline(0, color="black", lw=0.8)
        ax.set(title=f"Δ val accuracy vs {ref}\n(band: pointwise 95% CI over seeds, on the split that chose the "
                     "configurations)", xlabel="epoch", ylabel="points")
        ax.legend(fontsize=8)
    _save(fig, path, dpi)


def fig_learning_curves(inputs: ReportInputs, path: Path, dpi: int) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, by_seed in inputs.histories.items():
        runs = list(by_seed.values())
        if not runs:
            continue
        for ax, key in zip(axes, ("val_acc", "val_loss")):
            ep, vals = _curves(runs, key)
            ax.plot(ep, np.nanmean(vals, 0), label=label(name), color=COLORS.get(name))
            if len(runs) > 1:
                ax.fill_between(ep, np.nanmin(vals, 0), np.nanmax(vals, 0), color=COLORS.get(name), alpha=0.15)
    axes[0].set(title="val accuracy (inference rule; band: min–max over seeds)", xlabel="epoch", ylabel="accuracy")
    # the training losses are not comparable (distillation adds a term, mixing changes the targets): the val
    # cross-entropy of the inference rule on the true labels is the same quantity for every model
    axes[1].set(title="val cross-entropy (inference rule, true labels; band: min–max)", xlabel="epoch",
                ylabel="loss")
    axes[0].legend(loc="lower right", fontsize=8)
    _save(fig, path, dpi)


def fig_sweeps(inputs: ReportInputs, path: Path, dpi: int) -> None:
    """Each arm's trials: objective of completed ones, pruned ones as a rug (epochs run), and the final seeds."""
    arms = inputs.arms
    fig, axes = plt.subplots(1, len(arms), figsize=(3.6 * len(arms), 3.6), squeeze=False, sharey=True)
    for ax, arm in zip(axes[0], arms):
        t = inputs.trials[arm]
        done, pruned = t[t["state"] == "COMPLETE"], t[t["state"] == "PRUNED"]
        ax.scatter(done["number"], done["value"], color=COLORS[arm], edgecolors="black", s=40, label="completed")
        if len(pruned):  # no objective: an early val accuracy is not on this axis, so a rug below it
            rug = ax.get_xaxis_transform()
            ax.scatter(pruned["number"], [0.03] * len(pruned), transform=rug, marker="x", color="gray", s=30,
                       label="pruned (no objective)")
            for _, row in pruned.iterrows():
                ax.annotate(f"{int(row['epochs_run'])}ep", (row["number"], 0.03), xycoords=rug, fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        best = inputs.best[arm]
        if best.trial is not None:
            ax.scatter([best.trial], [best.objective], marker="*", s=200, color="red", zorder=5, label="best trial")
        finals = [s["objective"] for s in inputs.finals[arm]["per_seed"].values()]
        n = int(t["number"].max()) + 1 if len(t) else 0
        ax.errorbar([n], [np.mean(finals)], yerr=[np.std(finals, ddof=1)] if len(finals) > 1 else None,
                    fmt="s", color="black", capsize=4, label="final seeds (mean ± std)")
        ticks = list(range(0, n, max(1, n // 8)))
        ax.set_xticks([*ticks, n], [*map(str, ticks), "final"])
        ax.set(title=arm if best.recipe_from is None else f"{arm} (at {best.recipe_from}'s recipe)", xlabel="trial")
    axes[0][0].set_ylabel("val objective")
    axes[0][0].legend(fontsize=7, loc="lower left")
    _save(fig, path, dpi)


def tuning_curve(trials) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k = 1..completed trials, and the expected best val objective of k trials with its SD."""
    done = trials.loc[trials["state"] == "COMPLETE", "value"].to_numpy(dtype=float)
    k = np.arange(1, len(done) + 1)
    ev = np.array([expected_best(done, j) for j in k]).reshape(-1, 2)
    return k, ev[:, 0], ev[:, 1]


def fig_tuning_curves(inputs: ReportInputs, path: Path, dpi: int) -> None:
    """Has each study saturated? Expected best of k trials (band ±1 SD), and the best found so far."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm in [a for a in inputs.arms if a in inputs.trials]:
        t = inputs.trials[arm].sort_values("number")
        k, mean, sd = tuning_curve(t)
        if not len(k):
            continue
        ax.plot(k, mean, color=COLORS[arm], marker="o", ms=3, label=f"{arm}: expected best of k")
        ax.fill_between(k, mean - sd, mean + sd, color=COLORS[arm], alpha=0.15)
        so_far = t["value"].astype(float).fillna(-np.inf).cummax()  # pruned trials are spent trials
        ax.step(np.arange(1, len(t) + 1), so_far, where="post", ls="--", color=COLORS[arm], lw=1,
                label=f"{arm}: best so far (sampler's order)")
    if not ax.lines:
        ax.text(0.5, 0.5, "no study completed a trial", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="tuning curves (val objective; band: ±1 SD of the best of k)", xlabel="trials", ylabel="val objective")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path, dpi)


def fig_heads(inputs: ReportInputs, path: Path, dpi: int) -> None:
    arms = [a for a in inputs.arms if ARMS[a].two_heads and a in inputs.evaluation]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    heads = ("cls", "dist", "avg")
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        ev = inputs.evaluation[arm]
        ax.bar(np.arange(3) + i * width - 0.4 + width / 2, [ev[f"test_acc_{h}"] for h in heads], width,
               yerr=[ev.get(f"test_acc_{h}_std", 0.0) for h in heads], label=label(arm), color=COLORS[arm], capsize=3)
    if "none" in inputs.evaluation:
        ax.axhline(inputs.evaluation["none"]["test_acc"], ls="--", color=COLORS["none"], label=label("none"))
    ax.set(xticks=range(3), title="test accuracy by head (error bars: std over seeds)", ylabel="accuracy")
    ax.set_xticklabels(["class head", "distillation head", "average (inference)"])
    values = [inputs.evaluation[a][f"test_acc_{h}"] for a in arms for h in heads]
    if values:
        ax.set_ylim(max(0.0, min(values) - 0.1), 1.0)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path, dpi)


def fig_agreement(inputs: ReportInputs, path: Path, dpi: int) -> None:
    """How often each arm predicts what the teacher predicts on the test split, per seed."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    if "teacher_cls" in inputs.predictions:
        teacher = inputs.predictions["teacher_cls"].to_numpy()
        for i, arm in enumerate(inputs.arms):
            agree = [float((inputs.predictions[c].to_numpy() == teacher).mean())
                     for c in seed_columns(inputs.predictions, arm)]
            ax.bar(i, np.mean(agree), color=COLORS[arm])
            ax.scatter([i] * len(agree), agree, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(inputs.arms)))
        ax.set_xticklabels(inputs.arms)
    ax.set(title="agreement with the teacher on the test split (dots: seeds)", ylabel="fraction of images", ylim=(0, 1))
    _save(fig, path, dpi)


def fig_token_cosine(inputs: ReportInputs, path: Path, dpi: int) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, values in inputs.token_cosine.items():
        ax.plot(range(len(values)), values, marker="o", label=label(name), color=COLORS.get(name))
    ax.axhline(0.93, ls=":", color="gray", label="DeiT-B on ImageNet, last layer")
    ax.set(title="class vs distillation token: cosine similarity", xlabel="layer (0 = input embedding)",
           ylabel="mean cosine over test images", ylim=(-0.1, 1.05))
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path, dpi)


def fig_per_class(inputs: ReportInputs, path: Path, dpi: int) -> None:
    labels = inputs.predictions["label"].to_numpy()
    n = len(inputs.classes)
    names = (["teacher"] if "teacher_cls" in inputs.predictions else []) + inputs.arms
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * n + 3), 4.2))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        cols = ["teacher_cls"] if name == "teacher" else seed_columns(inputs.predictions, name)
        correct = np.stack([inputs.predictions[c].to_numpy() == labels for c in cols]).astype(float)
        acc = [float(correct[:, labels == c].mean()) for c in range(n)]
        ax.bar(np.arange(n) + i * width - 0.4 + width / 2, acc, width, label=label(name), color=COLORS[name])
    ax.set(title="test accuracy per class (mean over seeds)", xticks=range(n), ylabel="accuracy", ylim=(0, 1.05))
    ax.set_xticklabels(inputs.classes, rotation=45 if n > 12 else 0, fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(names))
    _save(fig, path, dpi)
