"""Batch-level augmentation on uint8 batches, on the training device.

Augmenting whole batches on the device is far cheaper than a per-image PIL pipeline on 2 CPU cores
(and keeps a GPU fed). Mixup/CutMix and random erasing are timm's implementations. The augmented
batch is what both the student and the teacher see.

Images may be stored larger than the size models see (data.storage_size > data.image_size):
training takes a random-resized crop of the stored image, or shifts it and crops the centre;
evaluation crops the centre (DeiT's eval view: store 256, crop 224).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.config import AugmentConfig
from .losses import smoothed_one_hot


class Normalizer:
    """uint8 -> normalised float; `size` (the models' input size) crops the centre of larger stored images."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device, size: int | None = None):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.size = size

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """The evaluation view: centre crop to `size`, then normalise."""
        return self.scale(center_crop(x_uint8, self.size))

    def scale(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """Normalise without cropping."""
        return (x_uint8.float() / 255.0 - self.mean) / self.std


def center_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


def draw_crop_boxes(shape: tuple[int, ...], height: int, width: int, scale: tuple[float, float],
                    ratio: tuple[float, float], gen: torch.Generator, attempts: int = 10) -> torch.Tensor:
    """Random-resized-crop boxes (top, left, h, w) for `shape` images, torchvision's rule vectorised.

    Each image tries `attempts` (area fraction, log-uniform aspect ratio) pairs and keeps the first that
    fits; when none fits it falls back to the whole image clamped to the ratio range, as torchvision does."""
    area = height * width
    target = area * torch.empty(*shape, attempts).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(*shape, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(fits.int(), dim=-1, keepdim=True)  # index of the first fitting attempt (0 if none)
    w, h = w.gather(-1, first).squeeze(-1), h.gather(-1, first).squeeze(-1)
    in_ratio = width / height
    fw = width if ratio[0] <= in_ratio <= ratio[1] else (width if in_ratio < ratio[0] else round(height * ratio[1]))
    fh = height if ratio[0] <= in_ratio <= ratio[1] else (round(width / ratio[0]) if in_ratio < ratio[0] else height)
    any_fit = fits.any(-1)
    w = torch.where(any_fit, w, torch.full_like(w, fw))
    h = torch.where(any_fit, h, torch.full_like(h, fh))
    u = torch.rand(*shape, 2, generator=gen)
    top = torch.floor(u[..., 0] * (height - h + 1))
    left = torch.floor(u[..., 1] * (width - w + 1))
    return torch.stack([top, left, h, w], dim=-1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop box i of image i and resize it to size x size (bicubic, as DeiT), all images in one grid_sample."""
    b, c, height, width = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(-1)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    # grid_sample's coordinates run from -1 to 1 across the pixel edges (align_corners=False).
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)


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
                 device: torch.device, mixing: float = 0.0, stored_size: int | None = None):
        """`mixing` is the Mixup and CutMix alpha (both; 0 = off): a searched knob, not a fixed augment setting.
        `stored_size`: the prepared images' size (random-resized crops are drawn in it)."""
        self.cfg = cfg
        self.stored_size = stored_size or normalizer.size
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
        if self.cfg.random_resized_crop:
            draws["boxes"] = draw_crop_boxes((steps, batch_size), self.stored_size, self.stored_size,
                                             self.cfg.rrc_scale, self.cfg.rrc_ratio, gen)
        return draws

    def __call__(self, x_uint8: torch.Tensor, y: torch.Tensor,
                 draws: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`draws`: this step's slice of `draw()`. Mixup, erasing and RandAugment use the global generators,
        which the caller seeds for the step (views.isolated_global_rng)."""
        if self.randaugment is not None:
            x_uint8 = self._apply_randaugment(x_uint8)
        x = self.normalize.scale(x_uint8)  # normalising commutes with cropping and (in-image) resampling
        if "boxes" in draws:
            x = resized_crop(x, draws["boxes"], self.normalize.size)
        else:
            if "offsets" in draws:  # shift the stored image, then crop: a random crop where it is stored larger
                x = random_translate(x, self.cfg.translate, draws["offsets"])
            x = center_crop(x, self.normalize.size)
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
