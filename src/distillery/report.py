"""The report: a markdown comparison with figures, built only from files the pipeline wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .config import LOSS_TYPES, ReportConfig  # noqa: E402
from .evaluate import confusion_matrix, per_class_accuracy  # noqa: E402
from .runs import read_history_csv  # noqa: E402
from .stats import Effect, paired_bootstrap  # noqa: E402

LABELS = {"teacher": "CNN teacher", "vit": "plain ViT (baseline)", "deit_soft": "DeiT, soft distillation",
          "deit_hard": "DeiT, hard distillation"}
SYMBOLS = {"alpha": "λ (alpha)", "tau": "τ (temperature)", "lr": "learning rate", "weight_decay": "weight decay"}
COLORS = {"teacher": "#444444", "vit": "#1f77b4", "deit_soft": "#ff7f0e", "deit_hard": "#2ca02c"}


@dataclass
class ReportInputs:
    data_summary: dict[str, Any]
    skipped: list[dict[str, str]]
    classes: list[str]
    evaluation: dict[str, Any]
    throughput: dict[str, float]
    predictions: pd.DataFrame
    histories: dict[str, list[list[dict[str, float]]]]  # model -> one history per seed
    sweeps: dict[str, tuple[dict[str, Any], pd.DataFrame]]
    importance: dict[str, dict[str, float]]
    token_cosine: dict[str, list[float]]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def load_inputs(root: Path) -> ReportInputs:
    metrics = root / "metrics"
    histories: dict[str, list[list[dict[str, float]]]] = {}
    if (metrics / "history" / "teacher.csv").exists():
        histories["teacher"] = [read_history_csv(metrics / "history" / "teacher.csv")]
    for name in ("vit", "deit_soft", "deit_hard"):
        files = sorted((metrics / "history" / name).glob("seed_*.csv"))
        if files:
            histories[name] = [read_history_csv(f) for f in files]
    sweeps, importance = {}, {}
    for kind in LOSS_TYPES:
        d = root / "sweeps" / kind
        if (d / "best.json").exists():
            sweeps[kind] = (_read_json(d / "best.json"), pd.read_csv(d / "trials.csv"))
        if (d / "importance.json").exists():
            importance[kind] = _read_json(d / "importance.json")
    cosine_path = metrics / "token_cosine.json"
    return ReportInputs(
        data_summary=_read_json(metrics / "data.json"),
        skipped=_read_json(skipped) if (skipped := root / "data" / "prepared" / "skipped.json").exists() else [],
        classes=_read_json(root / "data" / "prepared" / "classes.json"),
        evaluation=_read_json(metrics / "evaluation.json"),
        throughput=_read_json(metrics / "throughput.json"),
        predictions=pd.read_csv(metrics / "test_predictions.csv"),
        histories=histories,
        sweeps=sweeps,
        importance=importance,
        token_cosine=_read_json(cosine_path) if cosine_path.exists() else {},
    )


def seed_columns(pred: pd.DataFrame, model: str, head: str = "avg") -> list[str]:
    """Prediction columns of one model's head, one per seed; the baseline has only its cls head."""
    if model == "vit":
        head = "cls"
    return sorted(c for c in pred.columns if c.startswith(f"{model}_s") and c.endswith(f"_{head}"))


def correctness(pred: pd.DataFrame, model: str, head: str = "avg") -> np.ndarray:
    """(seeds, images) 0/1 matrix for one model's head."""
    cols = seed_columns(pred, model, head)
    return np.stack([(pred[c].to_numpy() == pred["label"].to_numpy()) for c in cols]).astype(np.float64)


def effects(inputs: ReportInputs, n_boot: int, seed: int) -> dict[str, Effect]:
    out = {}
    if "vit" not in inputs.evaluation:
        return out
    base = correctness(inputs.predictions, "vit")
    for kind in LOSS_TYPES:
        name = f"deit_{kind}"
        if name in inputs.evaluation:
            out[kind] = paired_bootstrap(correctness(inputs.predictions, name), base, n_boot, seed)
    return out


# ---------------------------------------------------------------- figures
def _mean_curve(runs: list[list[dict[str, float]]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    length = min(len(r) for r in runs)
    vals = np.array([[row.get(key, np.nan) for row in r[:length]] for r in runs])
    epochs = np.array([row["epoch"] for row in runs[0][:length]])
    return epochs, np.nanmean(vals, 0), np.nanmin(vals, 0), np.nanmax(vals, 0)


def fig_learning_curves(inputs: ReportInputs, path: Path, dpi: int) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in inputs.histories.items():
        for ax, key in zip(axes, ("val_acc", "train_loss")):
            ep, mean, lo, hi = _mean_curve(runs, key)
            ax.plot(ep, mean, label=LABELS.get(name, name), color=COLORS.get(name))
            if len(runs) > 1:
                ax.fill_between(ep, lo, hi, color=COLORS.get(name), alpha=0.15)
    axes[0].set(title="validation accuracy (inference rule)", xlabel="epoch", ylabel="accuracy")
    axes[1].set(title="training loss (each model's own objective)", xlabel="epoch", ylabel="loss")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def fig_sweeps(inputs: ReportInputs, path: Path, dpi: int) -> None:
    """One panel per (loss, searched parameter): final val accuracy of each trial against that parameter."""
    panels = [(kind, p) for kind, (_, trials) in inputs.sweeps.items()
              for p in ("alpha", "tau", "lr", "weight_decay") if p in trials and trials[p].notna().any()]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.8), squeeze=False)
    for ax, (kind, param) in zip(axes[0], panels):
        best, trials = inputs.sweeps[kind]
        done = trials[trials["state"] == "COMPLETE"]
        pruned = trials[trials["state"] == "PRUNED"]
        ax.scatter(done[param], done["value"], s=45, color=COLORS[f"deit_{kind}"], edgecolors="black",
                   linewidths=0.5, label="completed")
        if len(pruned):
            ax.scatter(pruned[param], pruned["last_val_acc"], facecolors="none", edgecolors="gray", s=45,
                       label="pruned (last val acc)")
        ax.scatter([best[param]], [best["val_acc"]], marker="*", s=220, color="red", label="best", zorder=5)
        if param in ("tau", "lr", "weight_decay") and (trials[param] > 0).all():
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(title=f"{kind}: {SYMBOLS.get(param, param)}", xlabel=SYMBOLS.get(param, param), ylabel="val accuracy")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def fig_importance(inputs: ReportInputs, path: Path, dpi: int) -> None:
    kinds = [k for k in inputs.importance if inputs.importance[k]]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(4.5 * max(1, len(kinds)), 3), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        imp = inputs.importance[kind]
        names = sorted(imp, key=imp.get)
        ax.barh([SYMBOLS.get(n, n) for n in names], [imp[n] for n in names], color=COLORS[f"deit_{kind}"])
        ax.set(title=f"{kind}: parameter importance (fANOVA)", xlim=(0, 1), xlabel="share of val-accuracy variance")
    if not kinds:
        axes[0][0].text(0.5, 0.5, "too few completed trials", ha="center")
        axes[0][0].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def fig_token_cosine(inputs: ReportInputs, path: Path, dpi: int) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, values in inputs.token_cosine.items():
        ax.plot(range(len(values)), values, marker="o", label=LABELS.get(name, name), color=COLORS.get(name))
    ax.set(title="class vs distillation token: cosine similarity", xlabel="layer (0 = input embedding)",
           ylabel="mean cosine over test images")
    lowest = min((min(v) for v in inputs.token_cosine.values()), default=0.0)
    ax.set_ylim(min(-0.1, lowest - 0.05), 1.05)
    ax.axhline(0.93, ls=":", color="gray", label="DeiT-B on ImageNet, last layer (input: 0.06)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def fig_agreement(inputs: ReportInputs, path: Path, dpi: int) -> None:
    """How often each model predicts what the teacher predicts on the test split, per seed."""
    if "teacher_cls" not in inputs.predictions:
        return _empty(path, dpi, "no teacher predictions")
    teacher = inputs.predictions["teacher_cls"].to_numpy()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    models = [m for m in ("vit", "deit_soft", "deit_hard") if m in inputs.evaluation]
    for i, model in enumerate(models):
        agree = [float((inputs.predictions[c].to_numpy() == teacher).mean())
                 for c in seed_columns(inputs.predictions, model)]
        ax.bar(i, np.mean(agree), color=COLORS[model], yerr=np.std(agree) if len(agree) > 1 else None, capsize=3)
        ax.scatter([i] * len(agree), agree, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([LABELS[m] for m in models], fontsize=8)
    ax.set(title="agreement with the teacher on the test split", ylabel="fraction of images", ylim=(0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _empty(path: Path, dpi: int, text: str) -> None:
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.text(0.5, 0.5, text, ha="center")
    ax.axis("off")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def fig_per_class(inputs: ReportInputs, path: Path, dpi: int) -> None:
    labels = inputs.predictions["label"].to_numpy()
    n = len(inputs.classes)
    models = [m for m in LABELS if m in inputs.evaluation]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.6, 1]})
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        if model == "teacher":
            acc = per_class_accuracy(inputs.predictions["teacher_cls"].to_numpy(), labels, n)
        else:
            corr = correctness(inputs.predictions, model)
            acc = [float(corr[:, labels == c].mean()) for c in range(n)]
        axes[0].bar(np.arange(n) + i * width - 0.4 + width / 2, acc, width, label=LABELS[model], color=COLORS[model])
    axes[0].set(title="test accuracy per class (mean over seeds)", xticks=range(n), ylabel="accuracy")
    axes[0].set_xticklabels(inputs.classes, rotation=45 if n > 12 else 0, fontsize=8)
    axes[0].set_ylim(0.0, 1.05)
    axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(models))
    students = [m for m in ("deit_soft", "deit_hard") if m in inputs.evaluation]
    if students:
        best = max(students, key=lambda m: inputs.evaluation[m]["test_acc"])
        col = seed_columns(inputs.predictions, best)[0]
        cm = confusion_matrix(inputs.predictions[col].to_numpy(), labels, n)
        im = axes[1].imshow(cm, cmap="Blues")
        fig.colorbar(im, ax=axes[1])
        axes[1].set(title=f"confusion: {LABELS[best]} ({col.split('_')[-2]})", xlabel="predicted", ylabel="true",
                    xticks=range(n), yticks=range(n))
        axes[1].set_xticklabels(inputs.classes, fontsize=7, rotation=90 if n > 12 else 0)
        axes[1].set_yticklabels(inputs.classes, fontsize=7)
    else:
        axes[1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def fig_heads(inputs: ReportInputs, path: Path, dpi: int) -> None:
    students = [m for m in ("deit_soft", "deit_hard") if m in inputs.evaluation]
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    heads = ("cls", "dist", "avg")
    for i, model in enumerate(students):
        ev = inputs.evaluation[model]
        vals = [ev[f"test_acc_{h}"] for h in heads]
        errs = [ev.get(f"test_acc_{h}_std", 0.0) for h in heads]
        ax.bar(np.arange(3) + i * 0.38 - 0.19, vals, 0.36, yerr=errs, label=LABELS[model], color=COLORS[model], capsize=3)
    for ref in ("vit", "teacher"):
        if ref in inputs.evaluation:
            ax.axhline(inputs.evaluation[ref]["test_acc"], ls="--", color=COLORS[ref], label=LABELS[ref])
    ax.set(xticks=range(3), title="test accuracy by head (error bars: std over seeds)", ylabel="accuracy")
    ax.set_xticklabels(["class head", "distillation head", "average (inference)"])
    lows = [inputs.evaluation[m][f"test_acc_{h}"] for m in students for h in heads] + \
           [inputs.evaluation[r]["test_acc"] for r in ("vit",) if r in inputs.evaluation]
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 0.05), 1.0)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# ---------------------------------------------------------------- markdown
def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _pct_std(ev: dict[str, Any], key: str) -> str:
    if key not in ev:
        return "–"
    std = ev.get(f"{key}_std")
    return f"{100 * ev[key]:.1f} ± {100 * std:.1f}" if std is not None else f"{100 * ev[key]:.1f}"


def render_markdown(inputs: ReportInputs, fx: dict[str, Effect], cfg: ReportConfig, figures: list[str]) -> str:
    ev, ds = inputs.evaluation, inputs.data_summary
    c = ds["counts"]
    seeds = ev.get("vit", {}).get("n_seeds", 1)
    lines = [
        f"# {cfg.title}", "",
        f"Data: **{ds['source']}**, {ds['num_classes']} classes, {ds['channels']}×{ds['image_size']}×{ds['image_size']} px, "
        f"train/val/test = {c['train']}/{c['val']}/{c['test']} images"
        + (f", {ds['num_skipped']} file(s) skipped (listed below)" if ds.get("num_skipped") else "") + ".",
        f"Students and baseline: {seeds} seed(s) each; accuracies are on the held-out test split (mean ± std over seeds).",
        "", "## Results", "",
        "| model | params | test acc, class head | dist head | average (inference) | agreement with teacher | images/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in LABELS:
        if name not in ev:
            continue
        m = ev[name]
        agree = _pct(m.get("teacher_agreement")) if name != "teacher" else "–"
        lines.append(
            f"| {LABELS[name]} | {m['num_params'] / 1e6:.2f} M | {_pct_std(m, 'test_acc_cls')} | {_pct_std(m, 'test_acc_dist')} | "
            f"{_pct_std(m, 'test_acc_avg') if 'test_acc_dist' in m else _pct_std(m, 'test_acc_cls')} | {agree} | "
            f"{inputs.throughput.get(name, float('nan')):,.0f} |"
        )
    lines += ["", "## Did distillation help?", ""]
    if fx:
        lines += ["| loss | best λ | best τ | Δ test acc vs plain ViT (points) | 95% CI | verdict |",
                  "| --- | ---: | ---: | ---: | --- | --- |"]
        for kind, e in fx.items():
            best = inputs.sweeps.get(kind, ({}, None))[0]
            tau = f"{best['tau']:.2f}" if "tau" in best else "–"
            lines.append(f"| {kind} | {best.get('alpha', float('nan')):.2f} | {tau} | {e.diff:+.1f} | "
                         f"[{e.low:+.1f}, {e.high:+.1f}] | **{e.verdict}** |")
        lines += ["", "Δ compares the averaged-head prediction of the distilled student with the plain ViT on the same "
                  "test images; the CI is a paired bootstrap over test images and seeds. A CI that contains 0 means "
                  "this run cannot tell the two apart."]
    else:
        lines.append("Not enough models were evaluated to compare.")
    lines += ["", "## Sweeps", ""]
    for kind, (best, trials) in inputs.sweeps.items():
        states = trials["state"].value_counts().to_dict()
        hp = ", ".join(f"{k} = {best[k]:.3g}" for k in SYMBOLS if k in best)
        lines.append(f"- **{kind}**: {len(trials)} trials ({', '.join(f'{v} {k.lower()}' for k, v in sorted(states.items()))}); "
                     f"best trial #{best['trial']}: {hp}, val acc {_pct(best['val_acc'])}%.")
    lines += ["", "## Figures", ""]
    captions = {
        "learning_curves.png": "Learning curves: validation accuracy and training loss per epoch (band: min–max over seeds).",
        "sweeps.png": "Sweep results: final validation accuracy of each trial against each searched parameter.",
        "importance.png": "Which searched parameter mattered most (Optuna's fANOVA importance over completed trials).",
        "agreement.png": "How often each model predicts the teacher's class on the test split (dots: seeds).",
        "token_cosine.png": "Cosine similarity of the class and distillation tokens through the student's layers.",
        "per_class.png": "Per-class test accuracy of every model, and the confusion matrix of the best distilled student.",
        "heads.png": "Class head, distillation head and their average for each distilled student.",
    }
    for f in figures:
        lines += [f"![{f}](figures/{f})", "", f"*{captions.get(f, f)}*", ""]
    if inputs.skipped:
        lines += ["## Skipped input files", "", "| file | reason |", "| --- | --- |"]
        lines += [f"| {s['file']} | {s['reason']} |" for s in inputs.skipped[:50]]
        if len(inputs.skipped) > 50:
            lines.append(f"| … | {len(inputs.skipped) - 50} more in data/prepared/skipped.json |")
        lines.append("")
    lines += ["---", "Generated by `dvc repro` (stage `report`) from metrics/, sweeps/ and the test predictions; "
              "per-run details are in MLflow (`mlflow ui`)."]
    return "\n".join(lines) + "\n"


def build_report(root: Path, out_dir: Path, cfg: ReportConfig, seed: int) -> Path:
    inputs = load_inputs(root)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    for fname, fn in (("learning_curves.png", fig_learning_curves), ("sweeps.png", fig_sweeps),
                      ("importance.png", fig_importance), ("heads.png", fig_heads), ("agreement.png", fig_agreement),
                      ("token_cosine.png", fig_token_cosine), ("per_class.png", fig_per_class)):
        fn(inputs, fig_dir / fname, cfg.dpi)
        figures.append(fname)
    fx = effects(inputs, cfg.bootstrap_samples, seed)
    md = out_dir / "report.md"
    md.write_text(render_markdown(inputs, fx, cfg, figures))
    summary = {kind: {"diff_points": e.diff, "ci_low": e.low, "ci_high": e.high, "verdict": e.verdict} for kind, e in fx.items()}
    (out_dir / "effects.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return md
