"""The view stream: which images each training batch holds and how they are augmented.

Every random draw that shapes what a model sees (batch order, shifts, flips, Mixup/CutMix pairing
and λ, random erasing, RandAugment) comes from the run's *view seed*, the epoch and the step, and
from nothing else: not from the initialisation seed, not from what the model's own dropout or drop
path consumed before. So the views of (view seed, epoch, step) are the same in every run that
shares the augmentation settings, which is what lets a teacher's logits be computed once and
replayed (`teacher_cache.py`), and what makes trials of different arms see the same data (common
random numbers).

timm's Mixup and RandomErasing draw from numpy's, Python's and torch's global generators; they run
inside `isolated_global_rng`, which seeds those for the step and restores the model's state after.
"""

from __future__ import annotations

import contextlib
import random
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from .augment import BatchAugment
from ..training.batches import to_device

_VIEW_TAG = 0x5649_4557  # "VIEW": keeps view seeds apart from any other use of the same integers


def step_seeds(view_seed: int, epoch: int, steps: int) -> tuple[int, list[int]]:
    """The epoch's seed (batch order, shifts, flips) and one seed per step (the global-RNG augmentations)."""
    seq = np.random.SeedSequence([_VIEW_TAG, view_seed & (2**63 - 1), epoch])
    seeds = seq.generate_state(steps + 1, dtype=np.uint32).tolist()
    return seeds[0], seeds[1:]


@contextmanager
def isolated_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block on global generators seeded with `seed`; restore the caller's generators after.

    Seeds the generators objects directly: torch.manual_seed and fork_rng cost ~1 ms a step on CPU."""
    gens = [torch.default_generator]
    if device.type == "cuda":
        gens.append(torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()])
    py_state, np_state, torch_states = random.getstate(), np.random.get_state(), [g.get_state() for g in gens]
    try:
        random.seed(seed)
        np.random.seed(seed)
        for g in gens:
            g.manual_seed(seed)
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        for g, state in zip(gens, torch_states):
            g.set_state(state)


class ViewStream:
    """The batches of one run, epoch by epoch, as a pure function of (view seed, epoch, step)."""

    def __init__(self, view_seed: int, n: int, batch_size: int, augment: BatchAugment, device: torch.device,
                 part: slice | None = None):
        """`part`: the positions of each global batch this process trains on (distributed.py); None: all."""
        self.view_seed = view_seed
        self.n = n
        self.batch_size = batch_size
        whole = part is None or (part.start, part.stop) == (0, batch_size)
        self.part = None if whole else part  # None: this process trains on every position of the batch
        self.steps = max(1, n // batch_size)  # the ragged last batch is dropped: Mixup needs even batches
        self.augment = augment
        self.device = device

    def epoch(self, epoch: int, images: Callable[[torch.Tensor, int, int], Iterator[torch.Tensor]],
              y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(augmented normalised batch, target distribution) for each step of `epoch` (0-based).

        `images(perm, steps, batch_size)` yields each step's uint8 images on the device (batches.py: from a
        device copy or streamed); `y` holds every label on the device. The epoch's draws are made and
        copied to the device here, before the first batch is asked for."""
        epoch_seed, seeds = step_seeds(self.view_seed, epoch, self.steps)
        gen = torch.Generator().manual_seed(epoch_seed)
        perm = torch.randperm(self.n, generator=gen)
        # Per-image draws for the whole epoch at once, moved to the device in one copy: a copy per step
        # would make the host wait for the GPU every step.
        draws = self.augment.draw(self.steps, self.batch_size, gen)
        if self.part is not None:
            # this rank's positions of every global batch: the same images and draws a single process uses there
            rows = perm[: self.steps * self.batch_size].view(self.steps, self.batch_size)[:, self.part]
            perm = rows.reshape(-1)
            draws = {k: v[:, self.part] for k, v in draws.items()}
        draws = {k: to_device(v, self.device) for k, v in draws.items()}
        return self._batches(perm, draws, seeds, images, y)

    def _batches(self, perm: torch.Tensor, draws: dict[str, torch.Tensor], seeds: list[int], images,
                 y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm_device = to_device(perm, self.device)
        size = self.batch_size if self.part is None else self.part.stop - self.part.start
        with contextlib.closing(images(perm, self.steps, size)) as batches:
            for step, x in enumerate(batches):
                y_step = y[perm_device[step * size:(step + 1) * size]]
                step_draws = {k: v[step] for k, v in draws.items()}
                if self.augment.uses_global_rng:
                    with isolated_global_rng(seeds[step], self.device):
                        batch = self.augment(x, y_step, step_draws)
                else:
                    batch = self.augment(x, y_step, step_draws)
                yield batch
