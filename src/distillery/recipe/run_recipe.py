"""What one training run is, besides its model and data: schedule, optimiser settings, loss and seeds.

Its fingerprint names a run's checkpoints: a checkpoint is resumed only by the very same recipe.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.config import AugmentConfig, TrainConfig
from .losses import DistillLoss

LOOP_VERSION = 2  # in every checkpoint's fingerprint: 2 = drop path drawn per run (droppath.py), not globally


@dataclass(frozen=True)
class Recipe:
    """What one training run needs beyond the model and the data."""

    epochs: int
    lr: float
    weight_decay: float
    mixing: float  # Mixup/CutMix alpha, 0 = off
    train: TrainConfig
    augment: AugmentConfig
    loss: DistillLoss = field(default_factory=DistillLoss)
    seed: int = 0  # initialisation, dropout and drop path
    view_seed: int = 0  # batch order and every augmentation draw (views.py)

    def fingerprint(self, extra: dict[str, Any] | None = None) -> str:
        recipe = {**_jsonable(asdict(self)), "train": self.train.identity()}  # streamed or not: the same run
        blob = json.dumps({"recipe": recipe, "extra": extra or {}, "loop": LOOP_VERSION}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    return obj
