"""Training checkpoints: written whole every epoch, the one before kept beside it, with every RNG's state."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.files import atomic_path


def rng_state() -> dict[str, Any]:
    # numpy's state holds an ndarray, which torch.load(weights_only=True) refuses: store its keys as a tensor
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path: Path | None) -> dict[str, Any] | None:
    """A training checkpoint's contents (on the CPU), or None if there is no readable one."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, corrupt or foreign: not a checkpoint this run can resume from
        return None
    return state if isinstance(state, dict) else None


def checkpoint_fingerprint(path: Path) -> str | None:
    """The fingerprint a checkpoint (or, killed between the two writes, the one before it) was written
    under, or None if there is no readable one."""
    state = read_checkpoint(path) or read_checkpoint(previous_of(path))
    return state.get("fingerprint") if state else None


def previous_of(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def save_checkpoint(path: Path, net, optimizer, scheduler, history, epoch, fingerprint) -> None:
    """The epoch's checkpoint; the one before it stays beside it as <name>.previous (loop._resume_group)."""
    if path.exists():
        os.replace(path, previous_of(path))  # a kill right after leaves the previous one, under its other name
    with atomic_path(path) as tmp:  # a kill during the write leaves the previous checkpoint intact
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state(), "history": history, "epoch": epoch, "fingerprint": fingerprint}, tmp)
