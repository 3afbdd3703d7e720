"""One training loop for teacher, distilled student and plain ViT: it always trains a group.

A run alone is a group of one. The loop knows nothing about MLflow or Optuna: it reports each epoch
to callbacks, which may log it or raise to stop (a pruned trial). It knows no loss kind either: the
teacher and the loss belong to the group's task (task.py), and how the forward runs (one module,
its DDP wrapper, or every member fused) to its step object (steps.py), both chosen once per group.
It checkpoints every epoch and resumes from the checkpoint when the same run (same fingerprint)
is started again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..recipe import droppath
from ..recipe.augment import BatchAugment, Normalizer
from .batches import batch_source, to_device
from .checkpoints import previous_of, read_checkpoint, save_checkpoint, set_rng_state
from .distributed import Ranks, all_sum, barrier
from .distributed import init as init_distributed
from ..data import Prepared
from ..core.errors import TrainingError
from ..recipe.run_recipe import Recipe
from .fusion import why_not_fusable
from .inference import val_metrics
from .steps import FusedStep, LoneStep
from .task import DistillationTask
from .teacher_cache import TeacherCache
from ..recipe.views import ViewStream

EpochCallback = Callable[[dict[str, Any]], None]
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


@dataclass
class Member:
    """One run inside a training group: what the caller gives, then its state from epoch to epoch.

    `callbacks` get each epoch's record; one that raises (a pruned trial) stops this member at the
    epoch boundary, and the exception becomes its `outcome`, while the rest of the group trains on."""

    net: nn.Module
    recipe: Recipe
    desc: str = "train"
    checkpoint: Path | None = None
    callbacks: list[EpochCallback] = field(default_factory=list)
    fingerprint_extra: dict[str, Any] | None = None
    replay: bool = False  # on resuming, first hand the checkpoint's epochs to the callbacks
    # state, set up by fit
    fingerprint: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    outcome: BaseException | None = None  # why the member stopped early (pruned, failed), or None
    views: Any = None  # views.ViewStream
    view_key: str = ""  # members with equal keys see the very same views
    optimizer: Any = None
    scheduler: Any = None
    params: list[torch.Tensor] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # droppath.install: the drop paths, in forward order
    drop_rates: torch.Tensor | None = None

    def active_in(self, epoch: int) -> bool:
        return self.outcome is None and self.start_epoch <= epoch < self.recipe.epochs

    def result(self) -> list[dict[str, Any]]:
        """The member's per-epoch history, or the exception that stopped it (a pruned trial, a failed loss)."""
        if self.outcome is not None:
            raise self.outcome
        return self.history


@dataclass
class _Group:
    """What the members of a group share: the data on the device, the batch size, the teacher."""

    members: list[Member]
    data: Prepared
    device: torch.device
    ranks: Ranks
    desc: str
    batch_size: int
    normalizer: Normalizer
    images: Any  # batches.batch_source: the training split on the device, or streamed
    y_train: torch.Tensor
    names: list[str]  # parameter names, the same in every member
    task: DistillationTask
    fused: bool = False  # the stacked forward, even when one member is left (see fit)
    step: LoneStep | FusedStep | None = None  # chosen once the module is final (DDP-wrapped or not)
    indices: dict[tuple, torch.Tensor] = field(default_factory=dict)  # _indices' memo

    @property
    def steps(self) -> int:
        return self.members[0].views.steps  # the ragged last batch is dropped: Mixup needs even batches


def fit(members: list[Member], data: Prepared, *, teacher: nn.Module | None = None,
        teacher_cache: TeacherCache | None = None, progress: bool = True, forbid_host_sync: bool = False,
        ranks: Ranks | None = None, desc: str | None = None, fused: bool | None = None) -> list[Member]:
    """Train every member in place, fused into one step per batch (fusion.py) when there are several.

    Each member keeps what makes it its own run: its seed's initial weights and drop-path draws, its
    view seed's batches and augmentations, its hyperparameters, optimizer, schedule, checkpoint and
    callbacks. A callback that raises (a pruned trial) stops its member at the epoch boundary; the rest
    train on, and `Member.result()` raises it again. With `teacher_cache`, the teacher's logits are
    replayed from it where an earlier run of the same view stream wrote them, and written there where
    not (bitwise the live result). `forbid_host_sync` (CUDA only, a diagnostic) raises if a training
    step makes the host wait for the GPU. With DISTILLERY_EPOCH_LOG set, each member's trained epoch
    appends a line to that file: how much work a run and its resumptions really did.

    `fused` (default: more than one member) keeps the stacked forward when pruning leaves a single
    member: its numbers change by summation order only. A group resumed after a kill reproduces the
    uninterrupted run bit for bit (_resume_group)."""
    ranks = ranks or Ranks.from_env()
    fused = len(members) > 1 if fused is None else fused
    group = _set_up(members, data, DistillationTask(members[0].recipe.loss, teacher, teacher_cache), ranks,
                    desc or members[0].desc, fused)
    _resume_group(members, group.fused)
    module = _distributed(members[0].net, group.device) if ranks.world > 1 else members[0].net
    group.step = FusedStep(members[0].net, group.names, group.task) if fused else LoneStep(module, group.task)
    group.task.open_streams(members, group)
    for m in members:
        for record in m.history if (m.replay and ranks.main) else ():
            _call_back(m, record)
    first = min(m.start_epoch for m in members)
    last = max(m.recipe.epochs for m in members)
    bar = tqdm(range(first, last), desc=group.desc, unit="ep", disable=not (progress and ranks.main),
               dynamic_ncols=True, initial=first, total=last)
    for epoch in bar:
        active = [m for m in members if m.active_in(epoch)]
        if not active:
            continue
        records = _train_epoch(group, active, epoch, forbid_host_sync)
        _finish_epoch(group, records, epoch)
        bar.set_postfix(_postfix(records))
    bar.close()
    return members


def _postfix(records: dict[int, tuple[Member, dict[str, Any]]]) -> dict[str, str]:
    recs = [r for _, r in records.values()]
    if not recs:
        return {}
    mean = {k: sum(r[k] for r in recs) / len(recs) for k in ("train_loss", "val_acc")}
    return {"runs": str(len(recs)), "loss": f"{mean['train_loss']:.3f}", "val_acc": f"{mean['val_acc']:.3f}"}


def _call_back(m: Member, record: dict[str, Any]) -> None:
    for cb in m.callbacks:
        try:
            cb(record)
        except Exception as exc:  # a pruned trial: this member stops, its group trains on
            m.outcome = exc
            return


def _finish_epoch(group: _Group, records: dict[int, tuple[Member, dict[str, Any]]], epoch: int) -> None:
    """Per member: the record into its history, its checkpoint, the epoch log, then its callbacks."""
    epoch_log = os.environ.get("DISTILLERY_EPOCH_LOG")
    for m, record in records.values():
        m.history.append(record)
        if m.checkpoint is not None and group.ranks.main:  # one writer; the others wait for the file
            save_checkpoint(m.checkpoint, m.net, m.optimizer, m.scheduler, m.history, epoch, m.fingerprint)
        if epoch_log and group.ranks.main:
            with open(epoch_log, "a") as fh:  # one short append: whole lines even when killed
                fh.write(f"{m.desc}\t{epoch + 1}\n")
    barrier(group.ranks)
    for m, record in records.values() if group.ranks.main else ():
        _call_back(m, record)


def _set_up(members: list[Member], data: Prepared, task: DistillationTask, ranks: Ranks, desc: str,
            fused: bool) -> _Group:
    """Check the members can share a group, place them and the data on the device, build each one's run."""
    lead = members[0].recipe
    _check_group(members, ranks, fused)
    device = _place([m.net for m in members], task, lead, ranks, desc)
    train = data.splits["train"]
    batch_size = group_batch_size(len(train.y), max(m.recipe.mixing for m in members), ranks, desc, lead.train.batch_size)
    normalizer = Normalizer(data.mean, data.std, device, data.image_size)
    images = batch_source(train.x, device, lead.train, desc)
    y_train = torch.as_tensor(train.y).to(device)
    group = _Group(members, data, device, ranks, desc, batch_size, normalizer, images, y_train,
                   [n for n, _ in members[0].net.named_parameters()], task, fused=fused)
    for m in members:
        _set_up_member(group, m)
    if lead.train.compile:
        members[0].net.compile()  # in place: the state dict keeps its keys, so checkpoints stay loadable uncompiled
    return group


def _check_group(members: list[Member], ranks: Ranks, fused: bool) -> None:
    """Members of one group share a batch, a loss kind and a device; fused ones must be fusable."""
    lead = members[0].recipe
    for m in members[1:]:
        r = m.recipe
        if (r.train, r.augment, r.loss.kind, r.loss.kl_reduction, type(m.net)) != \
                (lead.train, lead.augment, lead.loss.kind, lead.loss.kl_reduction, type(members[0].net)):
            raise TrainingError(f"{m.desc} cannot train in a group with {members[0].desc}: their recipes differ "
                                "beyond their seeds and searched settings")
    if not fused and len(members) > 1:
        raise TrainingError(f"{members[0].desc}: a group of {len(members)} runs trains fused or not at all")
    if fused:
        why = why_not_fusable(members[0].net)
        if why or ranks.world > 1 or lead.train.compile:
            raise TrainingError(f"{members[0].desc} cannot be fused with other runs: "
                                f"{why or ('it runs under DDP' if ranks.world > 1 else 'train.compile is on')}")


def _set_up_member(group: _Group, m: Member) -> None:
    """A member's own views, drop paths, optimizer and schedule, as a fresh run (resuming comes after)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    r, data = m.recipe, group.data
    augment = BatchAugment(r.augment, data.num_classes, r.train.label_smoothing, group.normalizer, group.device,
                           r.mixing, data.storage_size)
    m.views = ViewStream(r.view_seed, len(group.y_train), group.batch_size, augment, group.device,
                         group.ranks.part(group.batch_size))
    m.view_key = json.dumps([r.view_seed, r.mixing, r.augment.model_dump(), r.train.label_smoothing], default=str)
    m.paths = droppath.install(m.net)
    m.drop_rates = droppath.rates(m.net, m.paths)
    m.params = [p for _, p in m.net.named_parameters()]
    # torch's fused Adam/AdamW kernel (CPU and CUDA): one kernel instead of a Python loop over parameters,
    # 4x faster than the default on this CPU (benchmarks/bench_optimizer.py).
    opt_kwargs = {"fused": True} if r.train.optimizer in ("adamw", "adam") else {}
    m.optimizer = create_optimizer_v2(m.net, opt=r.train.optimizer, lr=r.lr, weight_decay=r.weight_decay, **opt_kwargs)
    m.scheduler, _ = create_scheduler_v2(
        m.optimizer, sched="cosine", num_epochs=r.epochs, warmup_epochs=min(r.train.warmup_epochs, r.epochs - 1),
        min_lr=r.train.min_lr, warmup_lr=r.lr * 0.01, step_on_epochs=False, updates_per_epoch=m.views.steps,
    )
    m.fingerprint = r.fingerprint(m.fingerprint_extra)


def _place(nets: list[nn.Module], task: DistillationTask, recipe: Recipe, ranks: Ranks, desc: str) -> torch.device:
    """Pick this process's device, seed, and move the models and the task's teacher there."""
    device = resolve_device(recipe.train.device)
    if device.type == "cuda" and ranks.world > 1:
        if ranks.local_rank >= torch.cuda.device_count():
            raise TrainingError(f"{desc}: process {ranks.local_rank + 1} on this host has no GPU of its own "
                                f"({torch.cuda.device_count()} visible); set final.nproc to at most the GPU count")
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    init_distributed(ranks, device)
    seed_everything(recipe.seed)  # a group of one's dropout (the CNN teacher) draws from the global generators
    for net in nets:
        net.to(device)
        if hasattr(net, "set_distilled_training"):
            net.set_distilled_training(recipe.loss.two_heads)
    task.place(device)
    return device


def group_batch_size(n: int, mixing: float, ranks: Ranks, desc: str, wanted: int) -> int:
    """The batch every member of a group uses; `mixing`: the largest Mixup/CutMix alpha among them."""
    batch_size = min(wanted, n)
    if mixing > 0 and batch_size == n and n % 2:
        batch_size -= 1  # fewer (odd) training images than a batch: keep mixing possible, drop one per epoch
    if mixing > 0 and batch_size % 2:
        raise TrainingError(f"{desc}: batch of {batch_size} images is odd and Mixup/CutMix pairs images within a "
                            "batch; set an even train.batch_size")
    if batch_size % ranks.world:
        raise TrainingError(f"{desc}: a batch of {batch_size} images cannot be split evenly over {ranks.world} "
                            "processes; set train.batch_size to a multiple of the process count")
    return batch_size


def _resume_group(members: list[Member], fused: bool) -> None:
    """Continue each member from its checkpoint when it was written by this very run (same fingerprint).

    A kill while a fused group writes its members' checkpoints leaves some one epoch ahead of the rest;
    those step back to their previous checkpoint, so the group redoes that epoch together, as the
    uninterrupted run did (a member's numbers in a fused step do not depend on the group, but differ
    from its numbers alone). An absent, unreadable or foreign checkpoint starts the member afresh."""
    states = [_own_states(m) for m in members]
    latest = [max(s) if s else -1 for s in states]
    behind = min(latest)
    if fused and max(latest) == behind + 1 and all(behind in s for s in states):
        latest = [behind] * len(members)
    for m, s, epoch in zip(members, states, latest):
        if epoch >= 0:
            _resume(m, s[epoch])


def _own_states(m: Member) -> dict[int, dict[str, Any]]:
    """The member's readable checkpoints of this very run (its last one and the one before), by epoch."""
    out = {}
    for path in (m.checkpoint, previous_of(m.checkpoint)) if m.checkpoint is not None else ():
        state = read_checkpoint(path)
        if state is not None and state.get("fingerprint") == m.fingerprint:
            out.setdefault(int(state["epoch"]), state)
    return out


def _resume(m: Member, state: dict[str, Any]) -> None:
    """On the CPU: torch.set_rng_state takes CPU tensors only; load_state_dict moves weights and moments to the device."""
    m.net.load_state_dict(state["model"])
    m.optimizer.load_state_dict(state["optimizer"])
    m.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    m.history = state["history"]
    m.start_epoch = state["epoch"] + 1
    if m.start_epoch < m.recipe.epochs:
        print(f"{m.desc}: resuming from {m.checkpoint} at epoch {m.start_epoch + 1}/{m.recipe.epochs}")


def _distributed(net: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    # A one-channel patch embedding has a size-1 dimension whose stride autograd and DDP's buckets
    # record differently: the same memory, so torch's "may impair performance" warning is noise.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # broadcast_buffers off: a ViT's only buffers are its drop-path masks, each rank's own part of the batch
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def _epoch_inputs(group: _Group, active: list[Member], epoch: int):
    """Each step's (x, target, teacher logits or None), stacked over `active` members: (K, B, ...).
    Members with one view key share its batches and its teacher forward."""
    lead = {}
    for m in active:
        lead.setdefault(m.view_key, m)
    streams = {k: m.views.epoch(epoch, group.images, group.y_train) for k, m in lead.items()}
    for step in range(group.steps):
        batch = {k: next(it) for k, it in streams.items()}
        teach = group.task.logits(step, batch)
        x = torch.stack([batch[m.view_key][0] for m in active])
        target = torch.stack([batch[m.view_key][1] for m in active])
        z_t = torch.stack([teach[m.view_key] for m in active]) if teach else None
        yield x, target, z_t


def _train_epoch(group: _Group, active: list[Member], epoch: int,
                 forbid_host_sync: bool) -> dict[int, tuple[Member, dict[str, Any]]]:
    """One pass over the epoch's views for every active member, then validation: their history records,
    by position in `active` (a member that failed during the epoch has none)."""
    t0 = time.perf_counter()
    for m in active:
        m.net.train()
    group.task.begin_epoch(epoch, list(dict.fromkeys(m.view_key for m in active)))
    # (steps, K, paths, B): each member's draws for the whole batch (a DDP rank keeps its part of it),
    # copied to the device once an epoch
    masks = torch.stack([droppath.epoch_masks(m.recipe.seed, epoch, group.steps, group.batch_size, m.drop_rates)
                         for m in active]).transpose(0, 1)[..., group.ranks.part(group.batch_size)]
    masks = to_device(masks.contiguous(), group.device)
    sums: dict[str, torch.Tensor] = {"loss": torch.zeros(len(active), device=group.device),
                                     "correct": torch.zeros(len(active), device=group.device)}
    live = list(range(len(active)))
    # closing() ends the sync check even when a step raises (a suspended generator would keep it on)
    with contextlib.closing(_steps_without_sync(_epoch_inputs(group, active, epoch), group.device,
                                                forbid_host_sync)) as steps:
        for step, (x, target, z_t) in enumerate(steps):
            live = _train_step(group, active, live, epoch, step, (x, target, z_t, masks[step]), sums)
            if not live:
                break
    for i in live:
        active[i].scheduler.step(epoch + 1)
    group.task.end_epoch(whole=bool(live))
    return _epoch_records(group, active, live, epoch, sums, time.perf_counter() - t0)


def _epoch_records(group: _Group, active: list[Member], live: list[int], epoch: int, sums: dict[str, torch.Tensor],
                   seconds: float) -> dict[int, tuple[Member, dict[str, Any]]]:
    if group.ranks.world > 1:  # every rank trained on its slice: sum, then the mean of equal slices
        sums = {k: all_sum(v, group.ranks) / (1 if k == "correct" else group.ranks.world) for k, v in sums.items()}
    sums = {k: v.cpu() for k, v in sums.items()}  # one host copy per epoch
    records = {}
    for i in live:
        m = active[i]
        train_loss = float(sums["loss"][i]) / group.steps
        if not math.isfinite(train_loss):
            m.outcome = TrainingError(f"{m.desc}: loss became {train_loss} in epoch {epoch + 1}; lower the learning "
                                      "rate or enable train.grad_clip")
            continue
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": float(sums["correct"][i]) / (group.steps * group.batch_size),
            **{f"train_{k}": float(v[i]) / group.steps for k, v in sums.items() if k not in ("loss", "correct")},
            **val_metrics(m.net, group.data, group.normalizer, m.recipe.train.eval_batch_size, group.device),
            "lr": m.optimizer.param_groups[0]["lr"],
            "epoch_seconds": seconds,
            "group_size": len(active),
            **group.task.record(m.view_key),
        }
        records[i] = (m, record)
    return records


def _train_step(group: _Group, active: list[Member], live: list[int], epoch: int, step: int,
                inputs: tuple, sums: dict[str, torch.Tensor]) -> list[int]:
    """One optimizer step for the `live` members (positions in `active`); adds each one's loss parts and
    correct count to `sums`. Returns the members still live: on a CPU, one whose loss is not finite
    stops here, and the step is redone without it (the others' numbers do not depend on it)."""
    x, target, z_t, masks = inputs
    members = [active[i] for i in live]
    idx = _indices(group, live)
    rows = idx if len(live) < len(active) else slice(None)
    x, target, masks = x[rows], target[rows], masks[rows]
    z_t = z_t[rows] if z_t is not None else None
    outputs, parts = group.step(members, x, target, z_t, masks)
    # A CPU check costs nothing; on GPU it would sync every step, so check once per epoch there.
    if group.device.type == "cpu" and not bool(torch.isfinite(parts["loss"]).all()):
        bad = [i for i, ok in zip(live, torch.isfinite(parts["loss"]).tolist()) if not ok]
        for i, value in zip(bad, parts["loss"][~torch.isfinite(parts["loss"])].tolist()):
            active[i].outcome = TrainingError(f"{active[i].desc}: loss became {value} at epoch {epoch + 1}, step "
                                              f"{step + 1}; lower the learning rate or enable train.grad_clip")
        rest = [i for i in live if i not in bad]
        return _train_step(group, active, rest, epoch, step, inputs, sums) if rest else rest
    for m in members:
        m.optimizer.zero_grad(set_to_none=True)
    parts["loss"].sum().backward()  # member k's loss depends on its own weights only: its own gradient
    for m in members:
        if m.recipe.train.grad_clip:
            nn.utils.clip_grad_norm_(m.net.parameters(), m.recipe.train.grad_clip)
        m.optimizer.step()
        m.scheduler.step_update(epoch * group.steps + step + 1)
    for k, v in parts.items():
        sums.setdefault(k, torch.zeros_like(sums["loss"])).index_add_(0, idx, v.detach())
    z_c = outputs[0] if isinstance(outputs, tuple) else outputs
    sums["correct"].index_add_(0, idx, (z_c.argmax(-1) == target.argmax(-1)).sum(-1).float())
    return live


def _indices(group: _Group, live: list[int]) -> torch.Tensor:
    """The live members' positions on the device: built once per set, not per step (a copy from pageable
    host memory would make the host wait for the GPU)."""
    key = tuple(live)
    if key not in group.indices:
        group.indices[key] = to_device(torch.tensor(live, dtype=torch.long), group.device)
    return group.indices[key]
