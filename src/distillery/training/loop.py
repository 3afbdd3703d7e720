"""One training loop for teacher, distilled student and plain ViT.

The loop knows nothing about MLflow or Optuna: it reports each epoch to callbacks, which may
log it or raise to stop (a pruned trial). It checkpoints every epoch and resumes from the
checkpoint when the same run (same fingerprint) is started again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .augment import BatchAugment, Normalizer
from .batches import batch_source
from .distributed import Ranks, all_sum, barrier
from .distributed import init as init_distributed
from ..core.config import AugmentConfig, TrainConfig
from ..core.files import atomic_path
from ..data import Prepared
from ..core.errors import TrainingError
from .losses import DistillLoss, soft_target_ce
from .models import split_heads, state_digest
from .teacher_cache import TeacherCache, open_teacher_logits, stream_key
from .views import ViewStream

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Recipe:
    """What one training run needs beyond the model and the data."""

    epochs: int
    lr: float
    weight_decay: float
    mixing: float  # Mixup/CutMix alpha, 0 = off
    train: TrainConfig
    augment: AugmentConfig
    loss: DistillLoss = field(default_factory=DistillLoss)
    seed: int = 0  # initialisation, dropout and drop path
    view_seed: int = 0  # batch order and every augmentation draw (views.py)

    def fingerprint(self, extra: dict[str, Any] | None = None) -> str:
        recipe = {**_jsonable(asdict(self)), "train": self.train.identity()}  # streamed or not: the same run
        blob = json.dumps({"recipe": recipe, "extra": extra or {}}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    return obj


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device='cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """The model's own randomness (dropout, drop path) draws from the global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _steps_without_sync(batches, device: torch.device, forbid: bool):
    """Iterate `batches` with CUDA's sync debug mode at "error" while the steps run (not between epochs)."""
    if not (forbid and device.type == "cuda"):
        yield from batches
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            yield batch
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


@torch.no_grad()
def predict(net: nn.Module, x_uint8: np.ndarray | torch.Tensor, normalizer: Normalizer, batch_size: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of the class head and (distilled ViT only) the distillation head, on CPU, float32."""
    net.eval()
    cls_out, dist_out = [], []
    for start in range(0, len(x_uint8), batch_size):
        # one batch at a time from the memory map: a split never has to fit in memory (copy: it is read-only)
        chunk = x_uint8[start:start + batch_size]
        chunk = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))
        x = normalizer(chunk.to(device, non_blocking=True))
        with _autocast(device):
            z_c, z_d = split_heads(net, x)
        cls_out.append(z_c.float().cpu())
        if z_d is not None:
            dist_out.append(z_d.float().cpu())
    return torch.cat(cls_out), (torch.cat(dist_out) if dist_out else None)


def _val_metrics(net: nn.Module, data: Prepared, normalizer: Normalizer, batch_size: int,
                 device: torch.device) -> dict[str, float]:
    split = data.splits["val"]
    z_c, z_d = predict(net, split.x, normalizer, batch_size, device)
    y = torch.as_tensor(split.y)
    logits = z_c if z_d is None else (z_c + z_d) / 2  # the inference rule: average the heads
    out = {"val_loss": float(soft_target_ce(logits, y)), "val_acc": float((logits.argmax(1) == y).float().mean())}
    if z_d is not None:
        out["val_acc_cls"] = float((z_c.argmax(1) == y).float().mean())
        out["val_acc_dist"] = float((z_d.argmax(1) == y).float().mean())
    return out


def _rng_state() -> dict[str, Any]:
    # numpy's state holds an ndarray, which torch.load(weights_only=True) refuses: store its keys as a tensor
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _read_checkpoint(path: Path | None) -> dict[str, Any] | None:
    """A training checkpoint's contents (on the CPU), or None if there is no readable one."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, corrupt or foreign: not a checkpoint this run can resume from
        return None
    return state if isinstance(state, dict) else None


def checkpoint_fingerprint(path: Path) -> str | None:
    """The fingerprint a checkpoint was written under, or None if there is no readable one."""
    state = _read_checkpoint(path)
    return state.get("fingerprint") if state else None


def fit(net: nn.Module, data: Prepared, recipe: Recipe, *, teacher: nn.Module | None = None,
        callbacks: list[EpochCallback] = (), checkpoint: Path | None = None, desc: str = "train",
        fingerprint_extra: dict[str, Any] | None = None, progress: bool = True,
        teacher_cache: TeacherCache | None = None, forbid_host_sync: bool = False,
        ranks: Ranks | None = None, replay: bool = False) -> list[dict[str, Any]]:
    """Train `net` in place; return the per-epoch history. Resumes from `checkpoint` if it matches.

    With `teacher_cache`, the teacher's logits are replayed from it where an earlier run of the same
    view stream wrote them, and written there where not; the result is bitwise the live run's.
    `forbid_host_sync` (CUDA only, a diagnostic) raises if a training step makes the host wait for the GPU.
    `replay`: on resuming, first hand the checkpoint's epochs to the callbacks (a sweep trial that replaces
    a killed one reports them to its new Optuna trial and MLflow run).
    With DISTILLERY_EPOCH_LOG set, each trained epoch appends a line to that file: how much work a run
    and its resumptions really did (the chaos test sums it)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    loss_fn = recipe.loss
    if loss_fn.needs_teacher and teacher is None:
        raise TrainingError(f"loss '{loss_fn.kind}' needs a teacher model")
    if teacher is not None and not loss_fn.needs_teacher:
        raise TrainingError(f"loss '{loss_fn.kind}' must not see a teacher (it is a no-teacher arm)")
    ranks = ranks or Ranks.from_env()
    device = resolve_device(recipe.train.device)
    if device.type == "cuda" and ranks.world > 1:
        if ranks.local_rank >= torch.cuda.device_count():
            raise TrainingError(f"{desc}: process {ranks.local_rank + 1} on this host has no GPU of its own "
                                f"({torch.cuda.device_count()} visible); set final.nproc to at most the GPU count")
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    init_distributed(ranks, device)
    seed_everything(recipe.seed)
    net.to(device)
    if hasattr(net, "set_distilled_training"):
        net.set_distilled_training(loss_fn.two_heads)
    if teacher is not None:
        teacher.to(device).eval()
        if device.type == "cuda":
            teacher.to(memory_format=torch.channels_last)
        for p in teacher.parameters():
            p.requires_grad_(False)

    train = data.splits["train"]
    n = len(train.y)
    batch_size = min(recipe.train.batch_size, n)
    if recipe.mixing > 0 and batch_size == n and n % 2:
        batch_size -= 1  # fewer (odd) training images than a batch: keep mixing possible, drop one per epoch
    if recipe.mixing > 0 and batch_size % 2:
        raise TrainingError(f"{desc}: batch of {batch_size} images is odd and Mixup/CutMix pairs images within a "
                            "batch; set an even train.batch_size")
    normalizer = Normalizer(data.mean, data.std, device, data.image_size)
    augment = BatchAugment(recipe.augment, data.num_classes, recipe.train.label_smoothing, normalizer, device,
                           recipe.mixing, data.storage_size)
    if batch_size % ranks.world:
        raise TrainingError(f"{desc}: a batch of {batch_size} images cannot be split evenly over {ranks.world} "
                            "processes; set train.batch_size to a multiple of the process count")
    views = ViewStream(recipe.view_seed, n, batch_size, augment, device, ranks.part(batch_size))
    steps_per_epoch = views.steps  # the ragged last batch is dropped: Mixup needs even batches
    # torch's fused Adam/AdamW kernel (CPU and CUDA): one kernel instead of a Python loop over parameters,
    # 4x faster than the default on this CPU (benchmarks/bench_optimizer.py).
    opt_kwargs = {"fused": True} if recipe.train.optimizer in ("adamw", "adam") else {}
    optimizer = create_optimizer_v2(net, opt=recipe.train.optimizer, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                    **opt_kwargs)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=recipe.epochs, warmup_epochs=min(recipe.train.warmup_epochs, recipe.epochs - 1),
        min_lr=recipe.train.min_lr, warmup_lr=recipe.lr * 0.01, step_on_epochs=False, updates_per_epoch=steps_per_epoch,
    )
    images = batch_source(train.x, device, recipe.train, desc)
    y_train = torch.as_tensor(train.y).to(device)
    if recipe.train.compile:
        net.compile()  # in place: the state dict keeps its keys, so checkpoints stay loadable uncompiled

    fingerprint = recipe.fingerprint(fingerprint_extra)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    # An absent, unreadable or foreign checkpoint has no matching fingerprint: the run starts afresh.
    # On the CPU: torch.set_rng_state takes CPU tensors only; load_state_dict moves weights and moments to the device.
    state = _read_checkpoint(checkpoint)
    if state is not None and state.get("fingerprint") == fingerprint:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        if start_epoch < recipe.epochs:
            print(f"{desc}: resuming from {checkpoint} at epoch {start_epoch + 1}/{recipe.epochs}")

    del state  # the optimizer's moments: not kept alive for the whole run
    teacher_logits_of = None
    model = net
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        teacher_cache = None  # each rank sees its slice of the view: the teacher runs live on it

        # A one-channel patch embedding has a size-1 dimension whose stride autograd and DDP's buckets
        # record differently: the same memory, so torch's "may impair performance" warning is noise.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if loss_fn.needs_teacher:
        known = fingerprint_extra or {}  # runs.run_identity's digests: hashing data and teacher again per trial is waste
        key = stream_key(known.get("teacher") or state_digest(teacher), known.get("data") or data.fingerprint(),
                         recipe.augment, recipe.mixing, batch_size, recipe.view_seed, device)
        local_batch = batch_size // ranks.world
        teacher_logits_of = open_teacher_logits(teacher, device, (steps_per_epoch, local_batch, data.num_classes),
                                                range(start_epoch, recipe.epochs), teacher_cache, key, desc)
    for record in history if (replay and ranks.main) else ():
        for cb in callbacks:
            cb(record)
    epoch_log = os.environ.get("DISTILLERY_EPOCH_LOG")
    bar = tqdm(range(start_epoch, recipe.epochs), desc=desc, unit="ep", disable=not (progress and ranks.main),
               dynamic_ncols=True,
               initial=start_epoch, total=recipe.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        net.train()
        from_cache = teacher_logits_of.begin_epoch(epoch) if teacher_logits_of is not None else False
        loss_sum = torch.zeros((), device=device)
        parts_sum: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=device)
        batches = views.epoch(epoch, images, y_train)
        # closing() ends the sync check even when a step raises (a suspended generator would keep it on)
        with contextlib.closing(_steps_without_sync(batches, device, forbid_host_sync)) as steps:
            for step, (x, target) in enumerate(steps):
                teacher_logits = teacher_logits_of(step, x) if teacher_logits_of is not None else None
                with _autocast(device):
                    outputs = model(x)
                outputs = tuple(o.float() for o in outputs) if isinstance(outputs, tuple) else outputs.float()
                parts = loss_fn(outputs, target, teacher_logits)
                loss = parts["loss"]
                # A CPU check costs nothing; on GPU it would sync every step, so check once per epoch there.
                if device.type == "cpu" and not torch.isfinite(loss):
                    raise TrainingError(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                        "lower the learning rate or enable train.grad_clip")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.train.grad_clip:
                    nn.utils.clip_grad_norm_(net.parameters(), recipe.train.grad_clip)
                optimizer.step()
                scheduler.step_update(epoch * steps_per_epoch + step + 1)
                loss_sum += loss.detach()
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0) + v.detach()
                z_c = outputs[0] if isinstance(outputs, tuple) else outputs
                correct += (z_c.argmax(1) == target.argmax(1)).sum()
        scheduler.step(epoch + 1)
        if teacher_logits_of is not None:
            teacher_logits_of.end_epoch()
        if ranks.world > 1:  # every rank trained on its slice: sum, then the mean of equal slices
            loss_sum = all_sum(loss_sum, ranks) / ranks.world
            correct = all_sum(correct, ranks)
            parts_sum = {k: all_sum(torch.as_tensor(v, device=device), ranks) / ranks.world for k, v in parts_sum.items()}
        train_loss = float(loss_sum) / steps_per_epoch
        if not math.isfinite(train_loss):
            raise TrainingError(f"{desc}: loss became {train_loss} in epoch {epoch + 1}; lower the learning rate "
                                "or enable train.grad_clip")
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": float(correct) / (steps_per_epoch * batch_size),
            **{f"train_{k}": float(v) / steps_per_epoch for k, v in parts_sum.items() if k != "loss"},
            **_val_metrics(net, data, normalizer, recipe.train.eval_batch_size, device),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - t0,
        }
        if teacher_logits_of is not None:
            record["teacher_from_cache"] = float(from_cache)
        history.append(record)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{record['val_acc']:.3f}")
        if checkpoint is not None and ranks.main:  # one writer; the others wait for the file
            _save_checkpoint(checkpoint, net, optimizer, scheduler, history, epoch, fingerprint)
        if epoch_log and ranks.main:
            with open(epoch_log, "a") as fh:  # one short append: whole lines even when killed
                fh.write(f"{desc}\t{epoch + 1}\n")
        barrier(ranks)
        for cb in callbacks if ranks.main else ():
            cb(record)
    bar.close()
    return history


def _save_checkpoint(path: Path, net, optimizer, scheduler, history, epoch, fingerprint) -> None:
    with atomic_path(path) as tmp:  # a kill during the write leaves the previous checkpoint intact
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(), "history": history, "epoch": epoch, "fingerprint": fingerprint}, tmp)
