"""How a group's forward pass runs, chosen once per group: one module alone, or every member fused.

Both give outputs and loss parts with a leading member dimension, so the loop's step (loop.py) is
the same for both. `LoneStep` runs one member's own module, or its DDP wrapper under torchrun: the
reference a fused member is tested against. `FusedStep` runs the members' stacked weights in one
forward (fusion.py): each member's numbers differ from its numbers alone by summation order only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .fusion import stacked_forward
from .inference import autocast
from .task import DistillationTask


def _as_float(outputs: Any) -> Any:
    return tuple(o.float() for o in outputs) if isinstance(outputs, tuple) else outputs.float()


class LoneStep:
    def __init__(self, module: nn.Module, task: DistillationTask):
        self.module = module  # the member's net, or its DistributedDataParallel wrapper
        self.task = task

    def __call__(self, members: list[Any], x: torch.Tensor, target: torch.Tensor, z_t: torch.Tensor | None,
                 masks: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
        (m,) = members
        with autocast(x.device):
            for i, name in enumerate(m.paths):
                m.net.get_submodule(name).mask = masks[0, i]
            outputs = self.module(x[0])
            outputs = tuple(o.unsqueeze(0) for o in outputs) if isinstance(outputs, tuple) else outputs.unsqueeze(0)
        outputs = _as_float(outputs)
        one = self.task.member_loss(tuple(o[0] for o in outputs) if isinstance(outputs, tuple) else outputs[0],
                                    target[0], z_t[0] if z_t is not None else None)
        return outputs, {k: v.unsqueeze(0) for k, v in one.items()}


class FusedStep:
    def __init__(self, base: nn.Module, names: list[str], task: DistillationTask):
        self.base = base  # any member: its module code runs with the stacked weights
        self.names = names  # parameter names, the same in every member
        self.task = task

    def __call__(self, members: list[Any], x: torch.Tensor, target: torch.Tensor, z_t: torch.Tensor | None,
                 masks: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
        with autocast(x.device):
            outputs = stacked_forward(self.base, self.names, [m.params for m in members], members[0].paths, x, masks)
        outputs = _as_float(outputs)
        alpha, tau = self.task.scalars(members, x.device)
        return outputs, self.task.group_loss(outputs, target, z_t, alpha, tau)
