"""What distillation asks of training, in one object: the teacher, its logits per step, and the loss.

As timm's TokenDistillationTask owns the teacher and the loss so that its trainer does not, the loop
(loop.py) trains a group of students and knows no loss kind: it asks the task for the teacher's
logits of each batch and for each member's loss. The task checks that an arm uses the teacher only
when its loss needs it, places the teacher on the device, and serves its logits live or replayed
from the teacher cache (teacher_cache.py), one stream per distinct view: members that see the
same views share one teacher forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..core.errors import TrainingError
from ..recipe.losses import DistillLoss
from ..recipe.models import state_digest
from .batches import to_device
from .teacher_cache import TeacherCache, TeacherLogits, open_teacher_logits, stream_key


class DistillationTask:
    """`loss`: the group's lead member's (kind and KL reduction are the group's; λ and τ each member's)."""

    def __init__(self, loss: DistillLoss, teacher: nn.Module | None, cache: TeacherCache | None):
        if loss.needs_teacher and teacher is None:
            raise TrainingError(f"loss '{loss.kind}' needs a teacher model")
        if teacher is not None and not loss.needs_teacher:
            raise TrainingError(f"loss '{loss.kind}' must not see a teacher (it is a no-teacher arm)")
        self.loss = loss
        self.teacher = teacher
        self.cache = cache
        self.streams: dict[str, TeacherLogits] = {}  # by view key
        self.from_cache: dict[str, bool] = {}  # this epoch's, by view key
        self._scalars: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def place(self, device: torch.device) -> None:
        if self.teacher is None:
            return
        self.teacher.to(device).eval()
        if device.type == "cuda":
            self.teacher.to(memory_format=torch.channels_last)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def open_streams(self, members: list[Any], group: Any) -> None:
        """The teacher's logits for each step of the epochs still to train, one stream per distinct view.
        runs.run_identity's digests in a member's fingerprint_extra spare hashing the data and teacher again.
        Under DDP each rank sees its slice of a view: the teacher runs live on it (no cache)."""
        if self.teacher is None:
            return
        cache = self.cache if group.ranks.world == 1 else None
        for m in members:
            if m.view_key in self.streams:
                continue
            known, r = m.fingerprint_extra or {}, m.recipe
            key = stream_key(known.get("teacher") or state_digest(self.teacher), known.get("data") or group.data.fingerprint(),
                             r.augment, r.mixing, group.batch_size, r.view_seed, group.device)
            start = min(o.start_epoch for o in members if o.view_key == m.view_key)
            shape = (group.steps, group.batch_size // group.ranks.world, group.data.num_classes)
            self.streams[m.view_key] = open_teacher_logits(self.teacher, group.device, shape, range(start, r.epochs),
                                                           cache, key, m.desc)

    def begin_epoch(self, epoch: int, view_keys: list[str]) -> None:
        self.from_cache = {k: self.streams[k].begin_epoch(epoch) for k in view_keys if k in self.streams}

    def end_epoch(self, whole: bool) -> None:
        """`whole`: the epoch ran to its last step (a stream's file holds whole epochs only)."""
        for k in self.from_cache:
            self.streams[k].end_epoch() if whole else self.streams[k].abandon_epoch()

    def logits(self, step: int, batches: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The teacher's logits of this step's batch of each view (none without a teacher)."""
        return {k: self.streams[k](step, x) for k, (x, _) in batches.items() if k in self.streams}

    def record(self, view_key: str) -> dict[str, float]:
        """What a member's epoch record says of the teacher: whether its logits came from the cache."""
        return {"teacher_from_cache": float(self.from_cache[view_key])} if view_key in self.streams else {}

    def scalars(self, members: list[Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' λ and τ on the device: built once per set of members, not per step (a copy from
        pageable host memory would make the host wait for the GPU)."""
        key = tuple(id(m) for m in members)
        if key not in self._scalars:
            self._scalars[key] = tuple(to_device(torch.tensor([getattr(m.recipe.loss, k) for m in members],
                                                              dtype=torch.float32), device) for k in ("alpha", "tau"))
        return self._scalars[key]

    def member_loss(self, outputs: Any, target: torch.Tensor, z_t: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One member's loss parts, on its own outputs (no member dimension)."""
        return self.loss(outputs, target, z_t)

    def group_loss(self, outputs: Any, target: torch.Tensor, z_t: torch.Tensor | None, alpha: torch.Tensor,
                   tau: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each member's loss parts at once (a leading member dimension everywhere), its own λ and τ."""
        return self.loss.group(outputs, target, z_t, alpha, tau)
