"""Final training of a student or the baseline, once per seed in final.seeds."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .config import Params
from .data import Prepared
from .losses import DistillLoss
from .paths import Layout
from .recipes import student_recipe, student_spec
from .runs import tracked_fit, write_json
from .tracking import base_tags


def train_final_models(params: Params, layout: Layout, data: Prepared, *, name: str, stage: str, loss: DistillLoss,
                       teacher: nn.Module | None, extra_tags: dict[str, str], lr: float | None = None,
                       weight_decay: float | None = None) -> dict[str, Any]:
    """Writes models/<name>/seed_<s>.pt, metrics/history/<name>/seed_<s>.csv and metrics/<name>.json.

    `lr`/`weight_decay` override the student recipe when the sweep tuned them.
    """
    per_seed = {}
    spec = student_spec(params, data, distilled=loss.needs_teacher)
    for seed in params.final.seeds:
        net = spec.build(seed)
        recipe = student_recipe(params, loss, params.final.epochs, seed, lr, weight_decay)
        result = tracked_fit(
            name=f"{name}-seed{seed}", net=net, spec=spec, data=data,
            recipe=recipe,
            tags=base_tags(layout, params, stage, seed=str(seed), **extra_tags),
            log_params={"seed": seed, "loss": {"kind": loss.kind, "alpha": loss.alpha, "tau": loss.tau,
                                               "kl_reduction": loss.kl_reduction},
                        "student": params.student.model_dump(), "final_epochs": params.final.epochs,
                        "lr": recipe.lr, "weight_decay": recipe.weight_decay,
                        "train": params.train.model_dump(), "augment": params.augment.model_dump()},
            model_path=layout.models / name / f"seed_{seed}.pt",
            history_path=layout.history / name / f"seed_{seed}.csv",
            checkpoint=layout.checkpoints / name / f"seed_{seed}.pt",
            teacher=teacher,
        )
        per_seed[str(seed)] = {k: v for k, v in result.history[-1].items() if k.startswith("val_")}
    used = {"none": {}, "hard": {"alpha": loss.alpha}, "soft": {"alpha": loss.alpha, "tau": loss.tau}}[loss.kind]
    metrics = {"loss": loss.kind, **used, "epochs": params.final.epochs,
               "lr": recipe.lr, "weight_decay": recipe.weight_decay,
               "per_seed": per_seed,
               "val_acc_mean": sum(s["val_acc"] for s in per_seed.values()) / len(per_seed)}
    write_json(layout.metrics / f"{name}.json", metrics)
    return metrics
