"""Where a training batch's uint8 images come from: a copy on the device, or the prepared memory map.

Small splits (the digits default: 2 MB) are copied to the device once and indexed there, which is
the fastest path. A split larger than `train.device_cache_mb` is streamed instead: a background
thread gathers each batch's rows from the memory map (in file order, then put back in batch order),
into pinned memory on CUDA, while the device trains on the previous batch. Both paths hand the
augmentation the same uint8 batch for the same indices, so results do not depend on the choice.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np
import torch

from ..core.config import TrainConfig


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without making the host wait: on CUDA a pageable copy synchronises
    (CUDA's sync debug mode flags it), a copy from pinned pages does not."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)  # torch keeps the pinned block until the copy ends


class DeviceBatches:
    """The whole split on the device; a batch is one index operation."""

    streamed = False

    def __init__(self, x: np.ndarray, device: torch.device):
        self.x = torch.from_numpy(np.array(x)).to(device)  # copy: the memory map is read-only
        self.device = device

    def __call__(self, perm: torch.Tensor, steps: int, batch_size: int) -> Iterator[torch.Tensor]:
        perm = to_device(perm, self.device)
        for step in range(steps):
            yield self.x[perm[step * batch_size:(step + 1) * batch_size]]


class StreamedBatches:
    """Batches read from the memory map by a background thread, `prefetch` batches ahead."""

    streamed = True

    def __init__(self, x: np.ndarray, device: torch.device, prefetch: int = 3):
        self.x = x
        self.device = device
        self.prefetch = prefetch
        self.pin = device.type == "cuda"  # pinned pages let the copy overlap compute (non_blocking)

    def _read(self, idx: np.ndarray) -> torch.Tensor:
        order = np.argsort(idx, kind="stable")
        rows = self.x[idx[order]]  # ascending offsets: sequential reads where the batch allows
        out = torch.empty((len(idx), *self.x.shape[1:]), dtype=torch.uint8, pin_memory=self.pin)
        out.numpy()[order] = rows
        return out

    def __call__(self, perm: torch.Tensor, steps: int, batch_size: int) -> Iterator[torch.Tensor]:
        perm_np = perm.numpy()
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def hand_over(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for step in range(steps):
                    if not hand_over(self._read(perm_np[step * batch_size:(step + 1) * batch_size])):
                        return
            except BaseException as exc:  # hand a read error to the training thread instead of hanging it
                hand_over(exc)

        worker = threading.Thread(target=produce, name="distillery-batches", daemon=True)
        worker.start()
        try:
            for _ in range(steps):
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                yield item.to(self.device, non_blocking=True)
        finally:
            stop.set()  # an epoch left early (a pruned trial, an error) stops the reader
            worker.join()


def batch_source(x: np.ndarray, device: torch.device, train: TrainConfig, desc: str = "train"):
    """DeviceBatches when the split fits `train.device_cache_mb` (or device_cache: on), else StreamedBatches."""
    size_mb = x.nbytes / 2**20
    on = train.device_cache == "on" or (train.device_cache == "auto" and size_mb <= train.device_cache_mb)
    if on:
        return DeviceBatches(x, device)
    why = "train.device_cache: off" if train.device_cache == "off" else \
        f"{size_mb:.0f} MB > train.device_cache_mb={train.device_cache_mb:g}"
    print(f"{desc}: streaming training batches from the prepared memory map ({why})")
    return StreamedBatches(x, device)
