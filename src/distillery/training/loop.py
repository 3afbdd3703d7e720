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


@dataclass
class _Run:
    """What one training run carries from epoch to epoch: built by _set_up, advanced by _train_epoch."""

    net: nn.Module
    model: nn.Module  # net, or its DistributedDataParallel wrapper
    data: Prepared
    recipe: Recipe
    device: torch.device
    ranks: Ranks
    desc: str
    batch_size: int
    normalizer: Normalizer
    views: ViewStream
    optimizer: Any
    scheduler: Any
    images: Any  # batches.batch_source: the training split on the device, or streamed
    y_train: torch.Tensor
    fingerprint: str
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    teacher_logits_of: Any = None  # teacher_cache.open_teacher_logits, for the distilled arms

    @property
    def steps(self) -> int:
        return self.views.steps  # the ragged last batch is dropped: Mixup needs even batches


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
    ranks = ranks or Ranks.from_env()
    run = _set_up(net, data, recipe, teacher, ranks, desc, fingerprint_extra)
    _resume(run, checkpoint)
    if ranks.world > 1:
        teacher_cache = None  # each rank sees its slice of the view: the teacher runs live on it
        run.model = _distributed(net, run.device)
    if recipe.loss.needs_teacher:
        run.teacher_logits_of = _teacher_logits(run, teacher, teacher_cache, fingerprint_extra or {})
    for record in run.history if (replay and ranks.main) else ():
        for cb in callbacks:
            cb(record)
    epoch_log = os.environ.get("DISTILLERY_EPOCH_LOG")
    bar = tqdm(range(run.start_epoch, recipe.epochs), desc=desc, unit="ep", disable=not (progress and ranks.main),
               dynamic_ncols=True, initial=run.start_epoch, total=recipe.epochs)
    for epoch in bar:
        record = _train_epoch(run, epoch, forbid_host_sync)
        run.history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{record['val_acc']:.3f}")
        if checkpoint is not None and ranks.main:  # one writer; the others wait for the file
            _save_checkpoint(checkpoint, net, run.optimizer, run.scheduler, run.history, epoch, run.fingerprint)
        if epoch_log and ranks.main:
            with open(epoch_log, "a") as fh:  # one short append: whole lines even when killed
                fh.write(f"{desc}\t{epoch + 1}\n")
        barrier(ranks)
        for cb in callbacks if ranks.main else ():
            cb(record)
    bar.close()
    return run.history


def _set_up(net: nn.Module, data: Prepared, recipe: Recipe, teacher: nn.Module | None, ranks: Ranks, desc: str,
            fingerprint_extra: dict[str, Any] | None) -> _Run:
    """Place the models, seed them, and build the views, optimizer and schedule of a fresh run."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    device = _place(net, teacher, recipe, ranks, desc)
    train = data.splits["train"]
    batch_size = _batch_size(len(train.y), recipe, ranks, desc)
    normalizer = Normalizer(data.mean, data.std, device, data.image_size)
    augment = BatchAugment(recipe.augment, data.num_classes, recipe.train.label_smoothing, normalizer, device,
                           recipe.mixing, data.storage_size)
    views = ViewStream(recipe.view_seed, len(train.y), batch_size, augment, device, ranks.part(batch_size))
    # torch's fused Adam/AdamW kernel (CPU and CUDA): one kernel instead of a Python loop over parameters,
    # 4x faster than the default on this CPU (benchmarks/bench_optimizer.py).
    opt_kwargs = {"fused": True} if recipe.train.optimizer in ("adamw", "adam") else {}
    optimizer = create_optimizer_v2(net, opt=recipe.train.optimizer, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                    **opt_kwargs)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=recipe.epochs, warmup_epochs=min(recipe.train.warmup_epochs, recipe.epochs - 1),
        min_lr=recipe.train.min_lr, warmup_lr=recipe.lr * 0.01, step_on_epochs=False, updates_per_epoch=views.steps,
    )
    images = batch_source(train.x, device, recipe.train, desc)
    y_train = torch.as_tensor(train.y).to(device)
    if recipe.train.compile:
        net.compile()  # in place: the state dict keeps its keys, so checkpoints stay loadable uncompiled
    return _Run(net, net, data, recipe, device, ranks, desc, batch_size, normalizer, views, optimizer, scheduler,
                images, y_train, recipe.fingerprint(fingerprint_extra))


def _place(net: nn.Module, teacher: nn.Module | None, recipe: Recipe, ranks: Ranks, desc: str) -> torch.device:
    """Check the arm's use of the teacher, pick this process's device, seed, and move both models there."""
    loss_fn = recipe.loss
    if loss_fn.needs_teacher and teacher is None:
        raise TrainingError(f"loss '{loss_fn.kind}' needs a teacher model")
    if teacher is not None and not loss_fn.needs_teacher:
        raise TrainingError(f"loss '{loss_fn.kind}' must not see a teacher (it is a no-teacher arm)")
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
    return device


def _batch_size(n: int, recipe: Recipe, ranks: Ranks, desc: str) -> int:
    batch_size = min(recipe.train.batch_size, n)
    if recipe.mixing > 0 and batch_size == n and n % 2:
        batch_size -= 1  # fewer (odd) training images than a batch: keep mixing possible, drop one per epoch
    if recipe.mixing > 0 and batch_size % 2:
        raise TrainingError(f"{desc}: batch of {batch_size} images is odd and Mixup/CutMix pairs images within a "
                            "batch; set an even train.batch_size")
    if batch_size % ranks.world:
        raise TrainingError(f"{desc}: a batch of {batch_size} images cannot be split evenly over {ranks.world} "
                            "processes; set train.batch_size to a multiple of the process count")
    return batch_size


def _resume(run: _Run, checkpoint: Path | None) -> None:
    """Continue from `checkpoint` when it was written by this very run (same fingerprint).

    An absent, unreadable or foreign checkpoint has no matching fingerprint: the run starts afresh.
    On the CPU: torch.set_rng_state takes CPU tensors only; load_state_dict moves weights and moments to the device."""
    state = _read_checkpoint(checkpoint)
    if state is None or state.get("fingerprint") != run.fingerprint:
        return
    run.net.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    run.history = state["history"]
    run.start_epoch = state["epoch"] + 1
    if run.start_epoch < run.recipe.epochs:
        print(f"{run.desc}: resuming from {checkpoint} at epoch {run.start_epoch + 1}/{run.recipe.epochs}")


def _distributed(net: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    # A one-channel patch embedding has a size-1 dimension whose stride autograd and DDP's buckets
    # record differently: the same memory, so torch's "may impair performance" warning is noise.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def _teacher_logits(run: _Run, teacher: nn.Module, teacher_cache: TeacherCache | None, known: dict[str, Any]):
    """The teacher's logits for each step of the epochs still to train: replayed from the cache or live.
    `known`: runs.run_identity's digests (hashing data and teacher again per trial is waste)."""
    key = stream_key(known.get("teacher") or state_digest(teacher), known.get("data") or run.data.fingerprint(),
                     run.recipe.augment, run.recipe.mixing, run.batch_size, run.recipe.view_seed, run.device)
    shape = (run.steps, run.batch_size // run.ranks.world, run.data.num_classes)
    return open_teacher_logits(teacher, run.device, shape, range(run.start_epoch, run.recipe.epochs), teacher_cache,
                               key, run.desc)


def _train_epoch(run: _Run, epoch: int, forbid_host_sync: bool) -> dict[str, Any]:
    """One pass over the epoch's views, then validation: the epoch's history record."""
    t0 = time.perf_counter()
    run.net.train()
    from_cache = run.teacher_logits_of.begin_epoch(epoch) if run.teacher_logits_of is not None else False
    sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=run.device)}
    correct = torch.zeros((), device=run.device)
    batches = run.views.epoch(epoch, run.images, run.y_train)
    # closing() ends the sync check even when a step raises (a suspended generator would keep it on)
    with contextlib.closing(_steps_without_sync(batches, run.device, forbid_host_sync)) as steps:
        for step, (x, target) in enumerate(steps):
            correct += _train_step(run, epoch, step, x, target, sums)
    run.scheduler.step(epoch + 1)
    if run.teacher_logits_of is not None:
        run.teacher_logits_of.end_epoch()
    if run.ranks.world > 1:  # every rank trained on its slice: sum, then the mean of equal slices
        correct = all_sum(correct, run.ranks)
        sums = {k: all_sum(torch.as_tensor(v, device=run.device), run.ranks) / run.ranks.world for k, v in sums.items()}
    train_loss = float(sums["loss"]) / run.steps
    if not math.isfinite(train_loss):
        raise TrainingError(f"{run.desc}: loss became {train_loss} in epoch {epoch + 1}; lower the learning rate "
                            "or enable train.grad_clip")
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "train_acc": float(correct) / (run.steps * run.batch_size),
        **{f"train_{k}": float(v) / run.steps for k, v in sums.items() if k != "loss"},
        **_val_metrics(run.net, run.data, run.normalizer, run.recipe.train.eval_batch_size, run.device),
        "lr": run.optimizer.param_groups[0]["lr"],
        "epoch_seconds": time.perf_counter() - t0,
    }
    if run.teacher_logits_of is not None:
        record["teacher_from_cache"] = float(from_cache)
    return record


def _train_step(run: _Run, epoch: int, step: int, x: torch.Tensor, target: torch.Tensor,
                sums: dict[str, torch.Tensor]) -> torch.Tensor:
    """One optimizer step; adds the loss parts to `sums` and returns the class head's correct count."""
    teacher_logits = run.teacher_logits_of(step, x) if run.teacher_logits_of is not None else None
    with _autocast(run.device):
        outputs = run.model(x)
    outputs = tuple(o.float() for o in outputs) if isinstance(outputs, tuple) else outputs.float()
    parts = run.recipe.loss(outputs, target, teacher_logits)
    loss = parts["loss"]
    # A CPU check costs nothing; on GPU it would sync every step, so check once per epoch there.
    if run.device.type == "cpu" and not torch.isfinite(loss):
        raise TrainingError(f"{run.desc}: loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                            "lower the learning rate or enable train.grad_clip")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.recipe.train.grad_clip:
        nn.utils.clip_grad_norm_(run.net.parameters(), run.recipe.train.grad_clip)
    run.optimizer.step()
    run.scheduler.step_update(epoch * run.steps + step + 1)
    for k, v in parts.items():
        sums[k] = sums.get(k, 0) + v.detach()
    z_c = outputs[0] if isinstance(outputs, tuple) else outputs
    return (z_c.argmax(1) == target.argmax(1)).sum()


def _save_checkpoint(path: Path, net, optimizer, scheduler, history, epoch, fingerprint) -> None:
    with atomic_path(path) as tmp:  # a kill during the write leaves the previous checkpoint intact
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(), "history": history, "epoch": epoch, "fingerprint": fingerprint}, tmp)
