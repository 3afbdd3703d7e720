"""One training run on several processes (torchrun): which slice of each global batch a rank trains on.

The global batch and its meaning stay those of a single process: the view stream draws the same
global batch (same images, same per-image draws) on every rank, and rank r trains on positions
[r·B/W, (r+1)·B/W) of it. Per-rank losses are means over equal slices and DDP averages gradients,
so the update is the single process's, up to the order of floating-point sums. Augmentations that
pair or draw within a batch from the global generators (Mixup/CutMix, random erasing, RandAugment)
act within each rank's slice: same distribution, not the same pairs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Ranks":
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def part(self, batch_size: int) -> slice:
        """This rank's positions in a global batch of `batch_size`."""
        local = batch_size // self.world
        return slice(self.rank * local, (self.rank + 1) * local)


def init(ranks: Ranks, device: torch.device) -> None:
    import torch.distributed as dist

    if ranks.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def all_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    """End the process group (if one was started) so a stage exits without torch's warning."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
