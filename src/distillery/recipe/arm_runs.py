"""From validated params to runs: the teacher, an arm's sweep trial, an arm's final seed.

Trials and final runs are both built by `arm_run`, so they train with the same schedule
(student.epochs, warm-up, cosine), the same recipe and the same MLflow param keys; they differ
only in the seeds and the run name. A run has two: its initialisation seed (weights, dropout, drop
path) and its view seed (batch order and augmentation, `views.py`). Every trial of every arm uses
`seed` for both, so all trials see the same views (common random numbers: their differences are
their settings). Final seed s uses s for both, so seed-to-seed variance includes data order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..core.arms import CONTROL_ALPHA, get_arm
from ..core.config import Params
from ..core.files import Best
from ..data import Prepared
from .run_recipe import Recipe
from .losses import DistillLoss
from .models import ModelSpec, build_teacher, vit_spec


@dataclass(frozen=True)
class RunPlan:
    name: str
    arm: str
    seed: int
    spec: ModelSpec
    recipe: Recipe
    hparams: dict[str, float]

    @property
    def uses_teacher(self) -> bool:
        return self.recipe.loss.needs_teacher

    def log_params(self, params: Params) -> dict[str, Any]:
        """Identical keys for a trial and a final run of any arm, so MLflow compares them column by column."""
        loss = self.recipe.loss
        return {"arm": self.arm, "seed": self.seed, "view_seed": self.recipe.view_seed, "epochs": self.recipe.epochs, **self.hparams,
                "loss": {"kind": loss.kind, "alpha": loss.alpha, "tau": loss.tau, "kl_reduction": loss.kl_reduction},
                "model": self.spec.name, "student": params.student.model_dump(), "train": params.train.model_dump(),
                "augment": params.augment.model_dump()}


def make_loss(params: Params, arm: str, hparams: dict[str, float]) -> DistillLoss:
    if arm == "control":
        return DistillLoss("control", CONTROL_ALPHA)
    if arm == "soft":
        return DistillLoss("soft", hparams["alpha"], hparams["tau"], params.distill.soft.kl_reduction)
    if arm == "hard":
        return DistillLoss("hard", hparams["alpha"])
    if arm == "fake":  # the soft loss, λ/τ of its own study, the labels as the teacher
        return DistillLoss("fake", hparams["alpha"], hparams["tau"], params.distill.soft.kl_reduction)
    return DistillLoss("none")


def student_spec(params: Params, data: Prepared, arm: str, drop_path: float) -> ModelSpec:
    s = params.student
    two_heads = get_arm(arm).two_heads
    return vit_spec("student" if two_heads else "baseline", s.model if two_heads else s.baseline_model,
                    data.image_size, data.channels, data.num_classes, s, drop_path)


def arm_run(params: Params, arm: str, data: Prepared, hparams: dict[str, float], seed: int, name: str) -> RunPlan:
    recipe = Recipe(epochs=params.student.epochs, lr=hparams["lr"], weight_decay=hparams["weight_decay"],
                    mixing=hparams["mixing"], train=params.train, augment=params.augment,
                    loss=make_loss(params, arm, hparams), seed=seed, view_seed=seed)
    return RunPlan(name, arm, seed, student_spec(params, data, arm, hparams["drop_path"]), recipe, dict(hparams))


def trial_run(params: Params, arm: str, data: Prepared, hparams: dict[str, float], number: int) -> RunPlan:
    return arm_run(params, arm, data, hparams, params.seed, f"{arm}-trial-{number}")


def final_run(params: Params, arm: str, data: Prepared, best: Best, seed: int) -> RunPlan:
    return arm_run(params, arm, data, best.hparams, seed, f"{arm}-seed{seed}")


def teacher_run(params: Params, data: Prepared) -> tuple[nn.Module, RunPlan]:
    t = params.teacher
    net, spec = build_teacher(t.model, data.channels, data.num_classes, t.pretrained, params.seed)
    train = params.train.model_copy(update={"label_smoothing": t.label_smoothing})
    recipe = Recipe(epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay, mixing=t.mixing, train=train,
                    augment=params.augment, loss=DistillLoss("none"), seed=params.seed, view_seed=params.seed)
    hparams = {"lr": t.lr, "weight_decay": t.weight_decay, "mixing": t.mixing}
    return net, RunPlan("teacher", "teacher", params.seed, spec, recipe, hparams)
