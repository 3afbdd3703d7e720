"""The teacher's output on the views a student trains on, next to the targets it trains on.

The views come from the same stream the training loop uses (views.py): the recipe's augmentation,
Mixup/CutMix alpha and label smoothing, the run's view seed and batch size. So what is measured is
what the distillation token was given, not the teacher on clean training images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..core.config import AugmentConfig, TrainConfig
from ..data import Prepared
from ..recipe.augment import BatchAugment, Normalizer
from ..training.batches import batch_source
from ..training.inference import autocast
from ..training.distributed import Ranks
from ..training.loop import group_batch_size, resolve_device
from ..recipe.views import ViewStream


@torch.no_grad()
def teacher_on_views(teacher: nn.Module, data: Prepared, augment_cfg: AugmentConfig, train_cfg: TrainConfig,
                     mixing: float, view_seed: int, epochs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(teacher logits, target distributions), each (N, K), over the first `epochs` epochs of views."""
    device = resolve_device(train_cfg.device)
    teacher.to(device).eval()
    normalizer = Normalizer(data.mean, data.std, device, data.image_size)
    train = data.splits["train"]
    augment = BatchAugment(augment_cfg, data.num_classes, train_cfg.label_smoothing, normalizer, device, mixing,
                           data.storage_size)
    batch_size = group_batch_size(len(train.y), mixing, Ranks(), "teacher on training views", train_cfg.batch_size)
    views = ViewStream(view_seed, len(train.y), batch_size, augment, device)
    images = batch_source(train.x, device, train_cfg, "teacher on training views")
    y = torch.as_tensor(train.y).to(device)
    logits, targets = [], []
    for epoch in range(epochs):
        for x, target in views.epoch(epoch, images, y):
            with autocast(device):
                z = teacher(x)
            logits.append(z.float().cpu())
            targets.append(target.float().cpu())
    return torch.cat(logits).numpy(), torch.cat(targets).numpy()
