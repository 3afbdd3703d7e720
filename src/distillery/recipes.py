"""From validated params to what the trainer needs: model specs and training recipes.

One place decides that the baseline uses exactly the student's recipe, size and seed.
"""

from __future__ import annotations

from .config import Params
from .data import Prepared
from .losses import DistillLoss
from .models import ModelSpec, vit_spec
from .train import Recipe


def teacher_recipe(params: Params) -> Recipe:
    t = params.teacher
    return Recipe(epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay, train=params.train,
                  augment=params.augment, loss=DistillLoss("none"), seed=params.seed)


def student_recipe(params: Params, loss: DistillLoss, epochs: int, seed: int, lr: float | None = None,
                   weight_decay: float | None = None) -> Recipe:
    """The student's recipe; `lr`/`weight_decay` override it when a sweep tuned them."""
    s = params.student
    return Recipe(epochs=epochs, lr=s.lr if lr is None else lr,
                  weight_decay=s.weight_decay if weight_decay is None else weight_decay,
                  train=params.train, augment=params.augment, loss=loss, seed=seed)


def student_spec(params: Params, data: Prepared, distilled: bool) -> ModelSpec:
    s = params.student
    return vit_spec("student" if distilled else "baseline", s.model if distilled else s.baseline_model,
                    data.image_size, data.channels, data.num_classes, s)


def make_loss(params: Params, kind: str, alpha: float, tau: float = 1.0) -> DistillLoss:
    """The distillation loss of `kind` with its options from distill.<kind>."""
    kl_reduction = getattr(getattr(params.distill, kind), "kl_reduction", "batchmean")
    return DistillLoss(kind, alpha, tau, kl_reduction)
