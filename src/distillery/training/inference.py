"""Inference on a split: the logits of a model's heads, and the val metrics the training loop reports."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..data import Prepared
from ..recipe.augment import Normalizer
from ..recipe.losses import soft_target_ce
from ..recipe.models import split_heads


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


@torch.no_grad()
def predict(net: nn.Module, x_uint8: np.ndarray | torch.Tensor, normalizer: Normalizer, batch_size: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of the class head and (distilled ViT only) the distillation head, on CPU, float32."""
    net.eval()
    cls_out, dist_out = [], []
    for start in range(0, len(x_uint8), batch_size):
        # one batch at a time from the memory map: a split never has to fit in memory (copy: it is read-only)
        chunk = x_uint8[start:start + batch_size]
        chunk = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))
        x = normalizer(chunk.to(device, non_blocking=True))
        with autocast(device):
            z_c, z_d = split_heads(net, x)
        cls_out.append(z_c.float().cpu())
        if z_d is not None:
            dist_out.append(z_d.float().cpu())
    return torch.cat(cls_out), (torch.cat(dist_out) if dist_out else None)


def val_metrics(net: nn.Module, data: Prepared, normalizer: Normalizer, batch_size: int,
                 device: torch.device) -> dict[str, float]:
    split = data.splits["val"]
    z_c, z_d = predict(net, split.x, normalizer, batch_size, device)
    y = torch.as_tensor(split.y)
    logits = z_c if z_d is None else (z_c + z_d) / 2  # the inference rule: average the heads
    out = {"val_loss": float(soft_target_ce(logits, y)), "val_acc": float((logits.argmax(1) == y).float().mean())}
    if z_d is not None:
        out["val_acc_cls"] = float((z_c.argmax(1) == y).float().mean())
        out["val_acc_dist"] = float((z_d.argmax(1) == y).float().mean())
    return out
