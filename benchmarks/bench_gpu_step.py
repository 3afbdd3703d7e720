"""The training step on a GPU: distillery's loop against a timm-style reference loop.

Run:  python benchmarks/bench_gpu_step.py [--images 5120] [--epochs 4] [--arms none,control,soft,hard]

Both loops train the same timm model (the keras-flowers profile's DeiT-Tiny at 224 px, batch 256)
on the same uint8 images already on the device, under bf16 autocast, with fused AdamW and a
per-step cosine schedule. The reference is the body of timm's train_one_epoch without its
per-step `loss.item()` (a host sync timm makes for its meters): normalise, flip, forward, loss,
backward, step. Ours is the loop's `fit()` with the profile's views (shift-and-crop of a 244 px store, flip,
label smoothing), its per-epoch val pass on a 256-image split, and for the distilled arms the
teacher (ResNet-50, live: no cache) on each batch; the reference for those arms runs the same
teacher forward under no_grad.

Printed: images/s per epoch (median over epochs after the first, which compiles kernels and warms
the allocator) and ours / reference. Then each arm runs one more epoch with forbid_host_sync=True:
CUDA's sync debug mode set to "error" inside the steps, so any step that waits for the GPU raises.
Only the ratios of one run mean anything; the absolute numbers are this card's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from distillery.core.config import parse_params  # noqa: E402
from distillery.data import Prepared  # noqa: E402
from distillery.data.datasets import Split  # noqa: E402
from distillery.profiles import profile_values  # noqa: E402
from distillery.training.loop import Member, fit  # noqa: E402
from distillery.recipe.models import build_teacher  # noqa: E402
from distillery.recipe.arm_runs import arm_run  # noqa: E402

HPARAMS = {"lr": 2.5e-4, "weight_decay": 1e-4, "mixing": 0.0, "drop_path": 0.1, "alpha": 0.5, "tau": 1.0}


def synthetic(n: int, n_val: int, store: int, size: int, classes: int, seed: int = 0) -> Prepared:
    rng = np.random.default_rng(seed)
    split = lambda k: Split(rng.integers(0, 256, (k, 3, store, store), dtype=np.uint8),  # noqa: E731
                            rng.integers(0, classes, k).astype(np.int64))
    return Prepared({"train": split(n), "val": split(n_val)}, [f"c{i}" for i in range(classes)],
                    [0.5] * 3, [0.25] * 3, train_size=size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_epochs(net, teacher, data: Prepared, epochs: int, batch: int, device: torch.device) -> list[float]:
    """images/s of each epoch of a timm-style loop over the same images."""
    from timm.loss import SoftTargetCrossEntropy
    from timm.scheduler import create_scheduler_v2

    x_all = torch.from_numpy(np.asarray(data.splits["train"].x)).to(device)
    y_all = torch.from_numpy(data.splits["train"].y).to(device)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1) * 255
    net.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    steps = len(x_all) // batch
    opt = torch.optim.AdamW(net.parameters(), lr=HPARAMS["lr"], weight_decay=HPARAMS["weight_decay"], fused=True)
    sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=epochs, warmup_epochs=1, step_on_epochs=False,
                                   updates_per_epoch=steps)
    loss_fn = SoftTargetCrossEntropy()
    out = []
    for epoch in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        order = torch.randperm(len(x_all), device=device)
        off = (data.storage_size - data.image_size) // 2
        for step in range(steps):
            idx = order[step * batch:(step + 1) * batch]
            x = x_all[idx][:, :, off:off + data.image_size, off:off + data.image_size].float()
            x = torch.where(torch.rand(len(idx), 1, 1, 1, device=device) < 0.5, x.flip(3), x)
            x = (x - mean) / std
            target = torch.nn.functional.one_hot(y_all[idx], data.num_classes).float() * 0.9 + 0.1 / data.num_classes
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                z = net(x)
                if teacher is not None:
                    with torch.no_grad():
                        t = teacher(x).argmax(1)
            if isinstance(z, tuple):
                loss = (loss_fn(z[0].float(), target) + (torch.nn.functional.cross_entropy(z[1].float(), t)
                                                         if teacher is not None else loss_fn(z[1].float(), target))) / 2
            else:
                loss = loss_fn(z.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step_update(epoch * steps + step + 1)
        sync(device)
        out.append(steps * batch / (time.perf_counter() - t0))
    return out


def host_syncs(net, data: Prepared, recipe, teacher, device: torch.device) -> str:
    """'none', or where the first step that made the host wait for the GPU did so."""
    if device.type != "cuda":
        return "not checked (CPU)"
    try:
        fit([Member(net, recipe, "sync check")], data, teacher=teacher, progress=False, forbid_host_sync=True)[0].result()
        return "none"
    except RuntimeError as exc:  # the sync debug mode's error; the frames say which call synchronised
        frames = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)]
        return f"{str(exc).splitlines()[0][:120]} at " + " <- ".join(reversed(frames[-4:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5120)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--arms", default="none,control,soft,hard")
    ap.add_argument("--profile", default="keras-flowers")
    ap.add_argument("--set", nargs="*", default=[], help="params overrides, key=value (a smaller run on CPU)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    from distillery.profiles import parse_overrides
    params = parse_params(profile_values(ROOT, args.profile, {**parse_overrides(args.set),
                                                               "distill": {"teacher": "live"}}))
    params = params.model_copy(update={"student": params.student.model_copy(update={"epochs": args.epochs})})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = params.data.image_size
    store = params.data.storage_size or size
    data = synthetic(args.images, params.train.eval_batch_size, store, size, 5)
    batch = params.train.batch_size
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"{args.images} images at {size} px (stored {store}), batch {batch}, {args.epochs} epochs", flush=True)
    teacher, _ = build_teacher(params.teacher.model, 3, 5, False, 0)
    results = {}
    for arm in args.arms.split(","):
        plan = arm_run(params, arm, data, HPARAMS, 0, f"bench-{arm}")
        t = teacher if plan.uses_teacher else None
        ref = reference_epochs(plan.spec.build(0), t, data, args.epochs, batch, device)
        hist = fit([Member(plan.spec.build(0), plan.recipe, arm)], data, teacher=t, progress=False)[0].result()
        ours = [(len(data.splits["train"].y) // batch) * batch / h["epoch_seconds"] for h in hist]
        syncs = host_syncs(plan.spec.build(0), data, dataclasses.replace(plan.recipe, epochs=1), t, device)
        r, o = statistics.median(ref[1:] or ref), statistics.median(ours[1:] or ours)
        results[arm] = {"reference_images_per_s": r, "ours_images_per_s": o, "ratio": o / r, "host_syncs": syncs,
                        "reference_epochs": ref, "ours_epochs": ours}
        print(f"{arm:8s} reference {r:9.0f} img/s   ours {o:9.0f} img/s   ours/reference {o / r:5.3f}   "
              f"host syncs in steps: {syncs}", flush=True)
    # The DeiT recipe's batch-level views (random resized crop, Mixup/CutMix, random erasing) on the same check.
    plan = arm_run(params, "none", data, {**HPARAMS, "mixing": 0.8}, 0, "bench-views")
    recipe = dataclasses.replace(plan.recipe, epochs=1, augment=plan.recipe.augment.model_copy(
        update={"random_resized_crop": True, "translate": 0, "random_erasing": 0.25}))
    syncs = host_syncs(plan.spec.build(0), data, recipe, None, device)
    results["none+rrc+mixup+erasing"] = {"host_syncs": syncs}
    print(f"none with random resized crop, Mixup/CutMix 0.8 and random erasing 0.25: host syncs in steps: {syncs}")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "torch": torch.__version__, **results}, indent=2))


if __name__ == "__main__":
    main()
