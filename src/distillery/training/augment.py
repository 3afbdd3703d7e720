"""Batch-level augmentation on in-memory tensors.

The prepared data is one uint8 tensor, so augmenting whole batches on the training device is
far cheaper than a per-image PIL pipeline on 2 CPU cores. Mixup/CutMix and random erasing are
timm's implementations. The augmented batch is what both the student and the teacher see.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.config import AugmentConfig
from .losses import smoothed_one_hot


class Normalizer:
    def __init__(self, mean: list[float], std: list[float], device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float() / 255.0 - self.mean) / self.std


def random_translate(x: torch.Tensor, max_shift: int, offsets: torch.Tensor) -> torch.Tensor:
    """Shift image i by offsets[i] - max_shift pixels (rows, cols), reflect padding; offsets in [0, 2·max_shift]."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    pad_mode = "reflect" if max_shift < min(h, w) else "replicate"
    padded = F.pad(x, (max_shift,) * 4, mode=pad_mode)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class BatchAugment:
    """uint8 batch + labels -> normalised augmented batch + target distribution."""

    def __init__(self, cfg: AugmentConfig, num_classes: int, label_smoothing: float, normalizer: Normalizer,
                 device: torch.device, mixing: float = 0.0):
        """`mixing` is the Mixup and CutMix alpha (both; 0 = off): a searched knob, not a fixed augment setting."""
        self.cfg = cfg
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.normalize = normalizer
        self.randaugment = None
        if cfg.randaugment:
            from timm.data.auto_augment import rand_augment_transform

            fill = tuple(int(round(m * 255)) for m in normalizer.mean.flatten().tolist())
            self.randaugment = rand_augment_transform(cfg.randaugment, {"img_mean": fill})
        self.mixup = None
        if mixing > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=mixing, cutmix_alpha=mixing, prob=cfg.mix_prob,
                               label_smoothing=label_smoothing, num_classes=num_classes)
        self.erasing = None
        if cfg.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self.erasing = RandomErasing(probability=cfg.random_erasing, mode="pixel", device=str(device))

    def _apply_randaugment(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """timm's RandAugment works on PIL images: one at a time, on the CPU."""
        imgs = x_uint8.cpu().numpy()
        out = np.empty_like(imgs)
        for i, img in enumerate(imgs):
            pil = Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0), "RGB")
            arr = np.asarray(self.randaugment(pil))
            out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(out).to(x_uint8.device)

    @property
    def uses_global_rng(self) -> bool:
        """timm's Mixup/CutMix, RandomErasing and RandAugment draw from the global generators."""
        return self.mixup is not None or self.erasing is not None or self.randaugment is not None

    def draw(self, steps: int, batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The per-image shifts and flips of a whole epoch, (steps, batch, ...), on the CPU."""
        draws = {}
        if self.cfg.translate > 0:
            draws["offsets"] = torch.randint(0, 2 * self.cfg.translate + 1, (steps, batch_size, 2), generator=gen)
        if self.cfg.hflip:
            draws["flip"] = torch.rand(steps, batch_size, generator=gen) < 0.5
        return draws

    def __call__(self, x_uint8: torch.Tensor, y: torch.Tensor,
                 draws: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`draws`: this step's slice of `draw()`. Mixup, erasing and RandAugment use the global generators,
        which the caller seeds for the step (views.isolated_global_rng)."""
        if self.randaugment is not None:
            x_uint8 = self._apply_randaugment(x_uint8)
        x = self.normalize(x_uint8)
        if "offsets" in draws:
            x = random_translate(x, self.cfg.translate, draws["offsets"])
        if "flip" in draws:
            x = random_hflip(x, draws["flip"])
        if self.mixup is not None:
            if x.shape[0] % 2:  # timm pairs images within the batch: never skip mixing silently
                raise ValueError(f"Mixup/CutMix needs an even batch, got {x.shape[0]} images")
            x, target = self.mixup(x, y)
        else:
            target = smoothed_one_hot(y, self.num_classes, self.label_smoothing)
        if self.erasing is not None:
            x = self.erasing(x)
        return x, target
