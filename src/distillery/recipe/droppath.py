"""Drop path (stochastic depth) whose draws belong to the run, not to the process.

timm's DropPath draws from torch's global generator. A run fused with others (`fusion.py`) shares
that generator with them, so its draws would depend on which members it was fused with and in which
order. Here a run's masks are drawn up front for a whole epoch from a generator seeded by (the run's
seed, the epoch) alone, the way `views.py` draws a run's augmentations: the same in a group of one
and in any fused group, and nothing to restore on resuming.

The masks are a non-persistent buffer: state dicts, and so checkpoints and saved models, keep timm's
keys, and a saved model loads into a plain timm ViT.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

_MODEL_TAG = 0x4D4F_444C  # "MODL": keeps these seeds apart from the view seeds of the same integers


class MaskedDropPath(nn.Module):
    """x · mask, the mask (one value per sample: 0 or 1/keep) set before each training step."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = float(rate)
        self.register_buffer("mask", torch.ones(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        return x * self.mask.view((-1,) + (1,) * (x.ndim - 1)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4g}"


def install(net: nn.Module) -> list[str]:
    """Replace every drop path of a timm ViT's blocks by a MaskedDropPath of the same rate (0 for the
    Identity timm puts where the rate is 0); return the replaced modules' names, in forward order."""
    from timm.layers import DropPath

    names = []
    for block_name, block in net.named_modules():
        for attr in ("drop_path1", "drop_path2"):
            old = getattr(block, attr, None)
            if isinstance(old, MaskedDropPath):
                rate = old.rate
            elif isinstance(old, DropPath):
                rate = old.drop_prob
            elif isinstance(old, nn.Identity):
                rate = 0.0
            else:
                continue
            setattr(block, attr, MaskedDropPath(rate))
            names.append(f"{block_name}.{attr}")
    return names


def rates(net: nn.Module, names: list[str]) -> torch.Tensor:
    return torch.tensor([net.get_submodule(n).rate for n in names], dtype=torch.float32)


def epoch_masks(seed: int, epoch: int, steps: int, batch: int, drop_rates: torch.Tensor) -> torch.Tensor:
    """(steps, paths, batch) masks of one run's epoch, a function of (seed, epoch) alone: 0 where a sample
    drops the path, 1/keep where it keeps it (timm's scaling), 1 everywhere on a path of rate 0."""
    state = np.random.SeedSequence([_MODEL_TAG, seed & (2**63 - 1), epoch]).generate_state(1, dtype=np.uint32)[0]
    gen = torch.Generator().manual_seed(int(state))
    keep = (1.0 - drop_rates).view(1, -1, 1)
    u = torch.rand(steps, len(drop_rates), batch, generator=gen)
    return torch.where(u < keep, 1.0 / keep, torch.zeros(()))


def buffers(names: list[str], masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """functional_call's buffer dict for one step's masks (paths, batch) or a group's (members, paths, batch)."""
    return {f"{n}.mask": masks.select(-2, i) for i, n in enumerate(names)}
