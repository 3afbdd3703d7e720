"""A trained student as a self-contained image classifier: what each logged MLflow Model holds.

Imports torch only; the network inside is a plain timm model rebuilt from its checkpoint, so a model
logged by the evaluate stage loads with `mlflow.pyfunc.load_model` in a process that has never imported
distillery's training code. Input: uint8 images (N, C, S, S) as `prepare` stores them (S = the stored
size, C = 1 or 3); output: class probabilities of the inference rule (the two heads averaged for a
distilled student). The preprocessing the pipeline evaluates with (centre crop to the model's size,
the training split's mean and std) travels inside the module.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


class ServedClassifier(nn.Module):
    def __init__(self, net: nn.Module, mean: list[float], std: list[float], size: int):
        super().__init__()
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.size = int(size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images if images.dim() == 4 else images[None]
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        x = (x.float() / 255.0 - self.mean) / self.std
        with torch.no_grad():
            if hasattr(self.net, "head_dist"):  # the same rule as evaluation: average the two heads' logits
                feats = self.net.forward_features(x)
                logits = (self.net.head(feats[:, 0]) + self.net.head_dist(feats[:, 1])) / 2
            else:
                logits = self.net(x)
        return logits.float().softmax(dim=-1)


def model_card(classes: list[str], channels: int, stored_size: int, size: int, mean: list[float],
               std: list[float], **extra: Any) -> dict[str, Any]:
    """The metadata an MLflow Model carries: what `distillery.predict` needs to turn image files into input."""
    return {"classes": list(classes), "channels": int(channels), "input_size": int(stored_size),
            "model_size": int(size), "mean": list(mean), "std": list(std), "head": "average of the heads",
            "input": "uint8 array (N, channels, input_size, input_size), resized and centre-cropped like prepare",
            **extra}
