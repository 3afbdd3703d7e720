"""Horizontal fusion: K models of one shape trained in one step.

Each layer of the K members runs as one batched operation over K sets of weights (torch.func's
ensembling recipe: `functional_call` under `vmap`; HFTA, Wang et al. 2021). Every member keeps its
own modules, optimizer and schedule: the weights are stacked afresh for each step (a copy of a few
hundred thousand numbers), and one backward pass through the stack hands each member its own
gradient. So a member's optimizer, checkpoint and saved model are exactly those of a run trained
alone, and a member leaves the group (pruned, failed) by being dropped from the list.

What cannot be fused trains as a group of one through the same loop: models with BatchNorm (batch
statistics are per member, and running statistics are buffers vmap cannot update in place) or with
dropout (its draws would come from one generator shared by the group), DDP runs and compiled models.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from ..core.config import Params
from ..data import Prepared
from ..recipe.arm_runs import student_spec
from ..recipe.droppath import buffers

# From benchmarks/bench_fusion.py (results/). On an H200 the default student (7 MFLOP an image) trains
# 5.7x faster per model at K = 32 and 6.8x at 64, while DeiT-Tiny at 224 px (2.2 GFLOP) already keeps
# the GPU 83 % busy alone and trains 0.66x as fast fused (batched attention written out, no flash
# kernel). On a 2-core CPU the default student gains 1.7x at K = 16, and photos-small's (162 MFLOP)
# loses: 0.85x at K = 4, 0.43x at 16. Above the FLOP limits a model trains alone.
CPU_GROUP = 16
GPU_GROUP = 64
CPU_MAX_FLOPS = 3e7  # between the CPU's measured gain (7 MFLOP) and loss (162 MFLOP), near the gain
GPU_MAX_FLOPS = 5e8


def why_not_fusable(net: nn.Module) -> str | None:
    """Why `net` must train alone, or None when it can be fused with models of its shape."""
    for name, module in net.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return f"it has BatchNorm ({name})"
        if isinstance(module, nn.Dropout) and module.p > 0:
            return f"it has dropout ({name}, p={module.p})"
    return None


def forward_flops(net: nn.Module, tokens: int) -> float:
    """A forward pass's multiply-adds per image, for a ViT: about 2 · parameters · tokens."""
    return 2.0 * sum(p.numel() for p in net.parameters()) * tokens


def group_size(fuse: str | int, runs: int, device: torch.device, flops_per_image: float, world: int = 1) -> int:
    """How many runs train together: `train.fuse` (auto | off | K), never more than there are runs."""
    if fuse == "off" or world > 1 or runs <= 1:
        return 1
    if fuse != "auto":
        return max(1, min(int(fuse), runs))
    if device.type == "cuda":
        return 1 if flops_per_image > GPU_MAX_FLOPS else min(GPU_GROUP, runs)
    return 1 if flops_per_image > CPU_MAX_FLOPS else min(CPU_GROUP, runs)


def chunks(items: list, size: int) -> list[list]:
    """`items` in consecutive groups of at most `size`, as even as possible (9 runs by 4: 3, 3, 3)."""
    groups = math.ceil(len(items) / size) if items else 0
    bounds = [round(i * len(items) / groups) for i in range(groups + 1)] if groups else [0]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def stacked_forward(base: nn.Module, names: list[str], params: list[list[torch.Tensor]], paths: list[str],
                    x: torch.Tensor, masks: torch.Tensor | None):
    """The forward pass of K members at once: member k's weights (`params[k]`, in `names` order) on
    member k's batch x[k] (x: (K, B, ...)) with its drop-path masks[k] (K, paths, B). `base`: any member,
    whose module code runs with the stacked weights."""
    stacked = {n: torch.stack(ps) for n, ps in zip(names, zip(*params))}
    extra = buffers(paths, masks) if masks is not None and paths else {}

    def one(p, b, xb):
        return torch.func.functional_call(base, (p, b), (xb,))

    with _explicit_attention(base, x.device):
        return torch.func.vmap(one)(stacked, extra, x)


@contextlib.contextmanager
def _explicit_attention(net: nn.Module, device: torch.device):
    """timm's attention written out (q·kᵀ, softmax, ·v) instead of scaled_dot_product_attention under vmap:
    its CPU kernel has no vmap rule (torch would loop over members in Python), and its CUDA
    memory-efficient kernel's backward fails on the batched layout (torch 2.11: "LSE is not correctly
    aligned"); the written-out form is plain batched matrix products on both."""
    flagged = [m for m in net.modules() if getattr(m, "fused_attn", None) is True]
    for m in flagged:
        m.fused_attn = False
    try:
        yield
    finally:
        for m in flagged:
            m.fused_attn = True


def fused_group_size(params: Params, data: Prepared, arm: str, runs: int, world: int = 1) -> int:
    """How many of an arm's `runs` train together (train.fuse), from the device and the student's FLOPs."""
    from .loop import resolve_device  # loop imports this module

    tokens = (data.image_size // params.student.patch_size) ** 2 + 2  # patches, class and distillation tokens
    flops = forward_flops(student_spec(params, data, arm, 0.0).build(0), tokens)
    return group_size(params.train.fuse, runs, resolve_device(params.train.device), flops, world)
