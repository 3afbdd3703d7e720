"""Test-split evaluation: accuracy of each head and of the inference rule, size and speed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..core.arms import DISTILLED, REFERENCES, load_best
from ..core.config import Params, TrainConfig
from ..core.errors import ConfigError
from ..core.files import planned_extra_seeds
from ..core.paths import Layout
from ..data import Prepared
from ..recipe.augment import Normalizer
from ..training.inference import predict
from ..training.loop import resolve_device
from ..recipe.models import count_params
from .transfer import agreement_by_class, consistent_errors, fidelity, label_signal, mean_over_seeds


def accuracy_of(net: nn.Module, data: Prepared, split: str, train_cfg: TrainConfig) -> float:
    """Top-1 of the model's inference output (the averaged heads for a distilled ViT)."""
    preds = head_predictions(net, data, split, train_cfg)
    return float((preds["avg"] == data.splits[split].y).mean())


def head_predictions(net: nn.Module, data: Prepared, split: str, train_cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Predicted class per image for each head: cls, dist (distilled only) and avg (the inference rule)."""
    return head_outputs(net, data, split, train_cfg)[0]


def head_outputs(net: nn.Module, data: Prepared, split: str, train_cfg: TrainConfig
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """head_predictions, and the logits of the inference rule (the heads' mean for a distilled ViT)."""
    device = resolve_device(train_cfg.device)
    net.to(device)
    z_c, z_d = predict(net, data.splits[split].x, Normalizer(data.mean, data.std, device, data.image_size), train_cfg.eval_batch_size, device)
    out = {"cls": z_c.argmax(1).numpy()}
    if z_d is None:
        out["avg"] = out["cls"]
        return out, z_c.numpy()
    z = (z_c + z_d) / 2
    out["dist"], out["avg"] = z_d.argmax(1).numpy(), z.argmax(1).numpy()
    return out, z.numpy()


@torch.no_grad()
def throughput(nets: dict[str, nn.Module], data: Prepared, train_cfg: TrainConfig, repeats: int
               ) -> dict[str, list[float]]:
    """Inference images/s of each model on the test split, one pass per model per round, `repeats`
    rounds after one warm-up each. The models take turns (the order rotates every round), so a drift
    in the machine's speed lands on all of them alike instead of on whichever ran during it."""
    device = resolve_device(train_cfg.device)
    normalizer = Normalizer(data.mean, data.std, device, data.image_size)
    x = data.splits["test"].x
    for net in nets.values():
        net.to(device)
        predict(net, x[: train_cfg.eval_batch_size], normalizer, train_cfg.eval_batch_size, device)
    names = list(nets)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            predict(nets[name], x, normalizer, train_cfg.eval_batch_size, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(len(x) / (time.perf_counter() - t0))
    return rates


@torch.no_grad()
def token_cosine_by_layer(net: nn.Module, data: Prepared, split: str, train_cfg: TrainConfig) -> list[float]:
    """Mean cosine similarity between the class and distillation tokens: at the input, then after each block."""
    device = resolve_device(train_cfg.device)
    net.to(device).eval()
    captured: list[torch.Tensor] = []
    hooks = [net.pos_drop.register_forward_hook(lambda m, i, o: captured.append(o))]
    hooks += [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in net.blocks]
    normalizer = Normalizer(data.mean, data.std, device, data.image_size)
    x_all = data.splits[split].x
    sums = torch.zeros(len(net.blocks) + 1, dtype=torch.float64)
    try:
        for start in range(0, len(x_all), train_cfg.eval_batch_size):
            captured.clear()
            net.forward_features(normalizer(torch.from_numpy(np.array(x_all[start:start + train_cfg.eval_batch_size])).to(device)))
            for layer, tokens in enumerate(captured):
                sums[layer] += torch.nn.functional.cosine_similarity(tokens[:, 0], tokens[:, 1], dim=-1).double().sum().cpu()
    finally:
        for h in hooks:
            h.remove()
    return (sums / len(x_all)).tolist()


def model_summary(net: nn.Module, preds: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {f"test_acc_{head}": float((p == labels).mean()) for head, p in preds.items()}
    out["num_params"] = count_params(net)
    return out


# ---------------------------------------------------------------- the evaluate stage's work
class Evaluation:
    def __init__(self, metrics: dict[str, Any], throughput: dict[str, list[float]], predictions,
                 token_cosine: dict[str, list[float]], transfer: dict[str, Any]):
        self.metrics, self.throughput, self.predictions = metrics, throughput, predictions
        self.token_cosine, self.transfer = token_cosine, transfer


def seed_models(layout: Layout, arms: list[str], pilot: list[int]) -> dict[str, list[tuple[int, Path]]]:
    """Every arm's models: the pilot seeds, then the seeds the seed plan added (models/extra/<arm>)."""
    extra = planned_extra_seeds(layout.seed_plan, arms)
    return {arm: [(s, layout.model(arm, s)) for s in pilot] + [(s, layout.model(arm, s, True)) for s in extra[arm]]
            for arm in arms}


def _checkpoints(layout: Layout, models: dict[str, list[tuple[int, Path]]]) -> dict[str, list[tuple[int | None, Path]]]:
    """The teacher (when trained) and every arm's seed models; a missing one is an error."""
    found: dict[str, list[tuple[int | None, Path]]] = {}
    if layout.teacher_model.exists():
        found["teacher"] = [(None, layout.teacher_model)]
    for arm, entries in models.items():
        missing = [path for _, path in entries if not path.exists()]
        if missing:
            raise ConfigError(f"{missing[0]} not found; run the arm's final (or extra) stage first (dvc repro)")
        found[arm] = list(entries)
    return found


def evaluate_all(layout: Layout, models: dict[str, list[tuple[int, Path]]], data: Prepared, train_cfg: TrainConfig,
                 repeats: int) -> Evaluation:
    """Top-1 per head for every model and seed, mean ± std over seeds, agreement with the teacher."""
    import pandas as pd

    from ..recipe.models import load_model

    labels = data.splits["test"].y
    columns: dict[str, np.ndarray] = {"label": labels}
    metrics: dict[str, Any] = {}
    timed: dict[str, nn.Module] = {}  # one model per arm (its first seed): timed together at the end
    teacher_pred = None
    cosine: dict[str, list[float]] = {}
    found = _checkpoints(layout, models)
    logits: dict[str, dict[str, list[np.ndarray]]] = {}  # model -> split -> per seed: what transfer_of needs
    for name, entries in found.items():
        per_seed = {}
        per_seed_cosine = []
        for seed, path in entries:
            net, _, _ = load_model(path, expect_classes=data.num_classes, expect_chans=data.channels)
            preds, z_test = head_outputs(net, data, "test", train_cfg)
            if "teacher" in found:
                logits.setdefault(name, {}).setdefault("test", []).append(z_test)
                logits[name].setdefault("train", []).append(head_outputs(net, data, "train", train_cfg)[1])
            summary = model_summary(net, preds, labels)
            if name == "teacher":
                teacher_pred = preds["avg"]
            elif teacher_pred is not None:
                summary["teacher_agreement"] = float((preds["avg"] == teacher_pred).mean())
            per_seed[seed] = summary
            if hasattr(net, "head_dist"):
                per_seed_cosine.append(token_cosine_by_layer(net, data, "test", train_cfg))
            tag = name if seed is None else f"{name}_s{seed}"
            for head, p in preds.items():
                if head == "avg" and "dist" not in preds:
                    continue
                columns[f"{tag}_{head}"] = p
            if seed is None or seed == entries[0][0]:
                timed[name] = net
        metrics[name] = _aggregate(per_seed)
        if per_seed_cosine:
            cosine[name] = np.mean(per_seed_cosine, axis=0).tolist()
    return Evaluation(metrics, throughput(timed, data, train_cfg, repeats), pd.DataFrame(columns), cosine,
                      transfer_of(logits, data))


def transfer_of(logits: dict[str, dict[str, list[np.ndarray]]], data: Prepared) -> dict[str, Any]:
    """Per arm and split: fidelity to the teacher (transfer.fidelity, mean over seeds) and agreement per
    class. The transferable images are those the teacher gets right and the reference arm (`none`, else
    `control`) gets wrong in most seeds. Empty without a teacher."""
    if "teacher" not in logits:
        return {}
    reference = next((r for r in REFERENCES if r in logits), None)
    out: dict[str, Any] = {"reference": reference, "splits": {}}
    for split in ("train", "test"):
        labels = data.splits[split].y
        z_t = logits["teacher"][split][0]
        wrong = (consistent_errors([z.argmax(1) for z in logits[reference][split]], labels) if reference
                 else np.zeros(len(labels), dtype=bool))
        arms = {}
        for arm, by_split in logits.items():
            if arm == "teacher":
                continue
            rows = [fidelity(z, z_t, labels, wrong) for z in by_split[split]]
            by_class = np.array([agreement_by_class(z, z_t, labels, data.num_classes) for z in by_split[split]],
                                dtype=np.float64)
            arms[arm] = {**mean_over_seeds(rows), "n_seeds": len(rows),
                         "agreement_by_class": [None if np.isnan(v) else float(v) for v in by_class.mean(axis=0)]}
        out["splits"][split] = {"teacher_acc": float((z_t.argmax(1) == labels).mean()), "arms": arms}
    return out


def _aggregate(per_seed: dict[int | None, dict[str, Any]]) -> dict[str, Any]:
    first = next(iter(per_seed.values()))
    out: dict[str, Any] = {"num_params": first["num_params"], "n_seeds": len(per_seed)}
    for key in first:
        if key == "num_params":
            continue
        values = np.array([s[key] for s in per_seed.values()], dtype=np.float64)
        out[key] = float(values.mean())
        if len(values) > 1:
            out[f"{key}_std"] = float(values.std(ddof=1))
    out["test_acc"] = out["test_acc_avg"]  # the inference rule: averaged heads for a distilled student
    if len(per_seed) > 1 or None not in per_seed:
        out["per_seed"] = {str(k): {kk: vv for kk, vv in v.items() if kk != "num_params"} for k, v in per_seed.items()}
    return out


def teacher_signal(layout: Layout, params: Params, data: Prepared) -> dict[str, Any] | None:
    """transfer.label_signal on one epoch of the first pilot seed's training views, at the recipe the
    distilled arms trained with and the soft arm's τ (1 without it). None without a distilled arm."""
    from ..recipe.models import load_model
    from .teacher_views import teacher_on_views

    distilled = [a for a in params.arms.all if a in DISTILLED]
    if not distilled or not layout.teacher_model.exists():
        return None
    arm = "soft" if "soft" in distilled else distilled[0]
    hparams = load_best(layout, params, arm).hparams
    teacher, _, _ = load_model(layout.teacher_model, expect_classes=data.num_classes, expect_chans=data.channels)
    z_t, target = teacher_on_views(teacher, data, params.augment, params.train, hparams["mixing"],
                                   view_seed=params.final.seeds[0])
    return {"arm": arm, **label_signal(z_t, target, hparams.get("tau", 1.0)).as_dict()}
