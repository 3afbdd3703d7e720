"""The teacher's logits for every training batch: computed live, or replayed from a cache.

The teacher is frozen and the views are a pure function of (view seed, epoch, step) (`views.py`),
so its logits for a run's batches are the same in every trial, arm and seed that shares the view
stream. The first run to need an epoch computes them while it trains and writes them down (one
fp16 array per epoch); every later run reads that array instead of running the teacher.

What is kept are raw logits, not probabilities: each run applies its own τ, λ or argmax. They are
rounded to fp16 in *both* modes, so a cached run is bitwise the live run (tested). The rounding
moves each logit by at most 2^-11 of its magnitude (fp16's unit roundoff); for a KL at τ ≥ 1 this
is far below the noise between seeds.

A stream's key covers everything its numbers depend on: the teacher's weights, the data, the
augmentation settings and Mixup/CutMix alpha, the batch size, the view seed, the device, the
autocast dtype and the torch version. Files are written atomically, so concurrent sweep workers at
worst compute the same epoch twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..core.config import Params
from ..core.files import atomic_path, write_text
from ..core.paths import Layout
from .machine import cpu_model

CACHE_DTYPE = torch.float16
FORMAT = 1


def round_logits(z: torch.Tensor) -> torch.Tensor:
    """The teacher's logits as every run sees them, cached or live: fp16 values, computed with in float32."""
    return z.to(CACHE_DTYPE).float()


def stream_key(teacher_digest: str, data_fingerprint: str, augment: Any, mixing: float, batch_size: int,
               view_seed: int, device: torch.device) -> dict[str, Any]:
    """Everything the teacher's input or output for a run's batches depends on.

    The library versions are here because timm, numpy and PIL decide what the augmentations draw and
    in which order: after an upgrade the same view seed may give other images, whose logits must not
    be replayed. The device model is here because another GPU or CPU rounds differently."""
    import PIL
    import timm

    hardware = (f"{torch.cuda.get_device_name(device)}, cudnn {torch.backends.cudnn.version()}"
                if device.type == "cuda" else f"{cpu_model()}, {torch.get_num_threads()} threads")
    return {"teacher": teacher_digest, "data": data_fingerprint, "augment": augment.model_dump(), "mixing": mixing,
            "batch_size": batch_size, "view_seed": view_seed, "device": device.type, "hardware": hardware,
            "versions": {"torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__,
                         "pillow": PIL.__version__}}


def _human(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MB" if nbytes < 2**30 else f"{nbytes / 2**30:.2f} GB"


@dataclass(frozen=True)
class TeacherCache:
    """Where cached streams live and how many bytes they may take together."""

    root: Path
    max_bytes: int

    def used_bytes(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(f.stat().st_size for f in self.root.glob("*/epoch_*.npy"))

    def stream_dir(self, key: dict[str, Any]) -> Path:
        blob = json.dumps({"format": FORMAT, **key}, sort_keys=True, default=str)
        return self.root / hashlib.sha256(blob.encode()).hexdigest()[:16]


class TeacherLogits:
    """The teacher's (fp16-rounded) logits for step `step` of the current epoch.

    Live when `stream` is None; otherwise each epoch is read from `stream` when its file is there
    and valid, and computed and written there when it is not (unless `writable` is False: over the cap).
    """

    def __init__(self, teacher: nn.Module, device: torch.device, shape: tuple[int, int, int],
                 stream: Path | None = None, writable: bool = True):
        self.teacher = teacher
        self.device = device
        self.shape = shape  # (steps, batch, classes)
        self.stream = stream
        self.writable = writable
        self.channels_last = device.type == "cuda"  # the layout cuDNN's convolutions are fastest in
        self._epoch: int | None = None
        self._cached: torch.Tensor | None = None
        self._built: torch.Tensor | None = None

    def _file(self, epoch: int) -> Path:
        assert self.stream is not None
        return self.stream / f"epoch_{epoch:04d}.npy"

    def _read(self, epoch: int) -> torch.Tensor | None:
        path = self._file(epoch)
        if not path.exists():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # unreadable, empty or truncated (e.g. a disk filled mid-write): recompute it
        if arr.shape != self.shape or arr.dtype != np.float16:
            return None
        return torch.from_numpy(arr).to(self.device)  # one copy per epoch, not per step

    def begin_epoch(self, epoch: int) -> bool:
        """Prepare `epoch`; True when its logits come from the cache."""
        self._epoch, self._cached, self._built = epoch, None, None
        if self.stream is None:
            return False
        self._cached = self._read(epoch)
        if self._cached is None and self.writable:
            self._built = torch.empty(self.shape, dtype=CACHE_DTYPE, device=self.device)
        return self._cached is not None

    def __call__(self, step: int, x: torch.Tensor) -> torch.Tensor:
        if self._cached is not None:
            return self._cached[step].float()
        with torch.no_grad():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.device.type == "cuda":
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    z = self.teacher(x)
            else:
                z = self.teacher(x)
        z = z.to(CACHE_DTYPE)
        if self._built is not None:
            self._built[step] = z
        return z.float()

    def abandon_epoch(self) -> None:
        """The epoch stopped before its last step (every run on this stream failed): write nothing."""
        self._built = None

    def end_epoch(self) -> None:
        """Write the epoch just computed (whole epochs only: a run killed mid-epoch leaves no partial file)."""
        if self._built is None or self._epoch is None:
            return
        assert self.stream is not None
        self.stream.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._file(self._epoch)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, self._built.cpu().numpy())
        self._built = None


def open_teacher_logits(teacher: nn.Module, device: torch.device, shape: tuple[int, int, int], epochs: range,
                        cache: TeacherCache | None, key: dict[str, Any], desc: str) -> TeacherLogits:
    """Live logits without a cache; with one, say what the stream holds and what building the rest costs."""
    if cache is None:
        return TeacherLogits(teacher, device, shape)
    stream = cache.stream_dir(key)
    missing = [e for e in epochs if not (stream / f"epoch_{e:04d}.npy").exists()]
    per_epoch = int(np.prod(shape)) * 2
    need, used = per_epoch * len(missing), cache.used_bytes()
    writable = True
    if not missing:
        print(f"{desc}: teacher logits for all {len(epochs)} epochs from the cache ({stream.name})")
    elif used + need > cache.max_bytes:
        writable = False
        print(f"{desc}: teacher cache would grow to {_human(used + need)}, over distill.cache_max_mb "
              f"({_human(cache.max_bytes)}); running the teacher live for the {len(missing)} uncached epochs")
    else:
        steps, batch, classes = shape
        print(f"{desc}: caching teacher logits for {len(missing)} of {len(epochs)} epochs: {len(missing)} × {steps} "
              f"batches × {batch} images × {classes} classes × 2 B = {_human(need)} "
              f"(cache {_human(used)} of {_human(cache.max_bytes)}, {stream.name})")
    if writable and missing:
        stream.mkdir(parents=True, exist_ok=True)
        write_text(stream / "key.json", json.dumps({"format": FORMAT, **key}, indent=1, sort_keys=True, default=str))
    return TeacherLogits(teacher, device, shape, stream, writable)


def cache_for(params: Params, layout: Layout) -> TeacherCache | None:
    """Where distilled runs replay the teacher's logits; None when distill.teacher is live."""
    d = params.distill
    if d.teacher == "live":
        return None
    root = Path(d.cache_dir) if d.cache_dir else layout.home / "cache" / "teacher"
    if not root.is_absolute():
        root = layout.home / root
    return TeacherCache(root, int(d.cache_max_mb * 2**20))
