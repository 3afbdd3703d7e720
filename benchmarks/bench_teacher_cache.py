"""What the teacher cache saves, measured side by side in one run on the default configuration.

Run (from the project root, venv active):  python benchmarks/bench_teacher_cache.py
  [--teacher models/teacher.pt] [--repeats 3] [--epochs 3] [--trials N] [--sweep-epochs N] [--skip-sweep]

Prints, as ratios of timings taken in this run (the machine's speed drifts; compare ratios):
  1. distilled epoch / plain-ViT epoch, with the teacher live and replayed from the cache, and the
     control arm (the distilled architecture without a teacher: what the extra token alone costs)
     (median seconds per epoch over interleaved repeats);
  2. the teacher's share of a live distilled step, and the cache's bytes per image per epoch;
  3. one sweep of the two distilled arms (soft then hard, the pipeline's order, fixed trial count,
     pruning as in params.yaml), live vs cached from an empty cache: wall-time ratio and the winners,
     which must be identical.
The data is the default digits split; the teacher is models/teacher.pt if it exists (else an
untrained one of the configured architecture: the timings hold, the sweep's winners mean little).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distillery.core.config import Params, TrackingConfig, load_params
from distillery.core.paths import Layout
from distillery.data import RawDataset, load_source, save_prepared, stratified_split, load_prepared
from distillery.training.loop import Member, fit
from distillery.recipe.models import build_teacher, load_model
from distillery.recipe.arm_runs import arm_run
from distillery.training.teacher_cache import TeacherCache
from distillery.training.batches import DeviceBatches
from distillery.recipe.views import ViewStream
from distillery.recipe.augment import BatchAugment, Normalizer

HP = {"lr": 2e-3, "weight_decay": 0.05, "mixing": 0.0, "drop_path": 0.05, "alpha": 0.5, "tau": 3.0}


def prepared_data(params: Params, tmp: Path):
    raw: RawDataset = load_source(params.data, cache_dir=Path.home() / ".cache" / "distillery")
    idx = stratified_split(raw.labels, params.data.val_fraction, params.data.test_fraction, params.seed, raw.classes)
    save_prepared(raw, idx, tmp / "prepared", params.data.source)
    return load_prepared(tmp / "prepared")


def the_teacher(params: Params, data, path: Path):
    if path.exists():
        return load_model(path)[0], str(path)
    net, _ = build_teacher(params.teacher.model, data.channels, data.num_classes, False, params.seed)
    return net, f"untrained {params.teacher.model} ({path} not found)"


def epoch_seconds(params, data, arm, teacher, cache, epochs) -> list[float]:
    run = arm_run(params, arm, data, HP, seed=1, name=arm)
    recipe = dataclasses.replace(run.recipe, epochs=epochs)
    (member,) = fit([Member(run.spec.build(1), recipe, arm)], data, teacher=teacher if run.uses_teacher else None,
                    teacher_cache=cache, progress=False)
    history = member.result()
    return [h["epoch_seconds"] for h in history]


def teacher_seconds_per_epoch(params, data, teacher, repeats: int) -> float:
    """The teacher's forward over one epoch's batches alone (what the cache removes from a live step)."""
    device = torch.device("cpu")
    norm = Normalizer(data.mean, data.std, device, data.image_size)
    augment = BatchAugment(params.augment, data.num_classes, params.train.label_smoothing, norm, device, HP["mixing"])
    x, y = DeviceBatches(data.splits["train"].x, device), torch.as_tensor(data.splits["train"].y)
    stream = ViewStream(1, len(y), params.train.batch_size, augment, device)
    batches = [xb for xb, _ in stream.epoch(0, x, y)]
    teacher.eval()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            for xb in batches:
                teacher(xb)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sweep_pair(params, data, teacher, cache, tmp: Path, tag: str):
    """The soft and hard sweeps as the pipeline runs them (same objective, pruner, sampler)."""
    import optuna

    from distillery.core.search_spaces import study_budget
    from distillery.core.tracking import setup_tracking, start_run
    from distillery.tuning.objective import ArmObjective
    from distillery.tuning.studies import open_arm_study, run_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    layout = Layout(tmp / tag)
    layout.root.mkdir(parents=True, exist_ok=True)
    setup_tracking(TrackingConfig(uri=f"sqlite:///{layout.root / 'mlflow.db'}"), layout)
    winners, t0 = {}, time.perf_counter()
    for arm in ("soft", "hard"):
        budget = study_budget(params, arm)
        study = open_arm_study(layout.root / f"{arm}.db", arm, budget)
        with start_run(f"sweep-{arm}", {}, {}):
            result = run_study(study, ArmObjective(params, arm, data, teacher, {}, cache), budget["n_trials"],
                               lock_path=layout.root / f"{arm}.lock")
        winners[arm] = (result.best["trial"], round(result.best["objective"], 6), result.best["hparams"])
    return time.perf_counter() - t0, winners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--teacher", default="models/teacher.pt")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed run in part 1")
    parser.add_argument("--trials", type=int, default=None, help="trials per arm in part 3 (default: sweep.n_trials)")
    parser.add_argument("--sweep-epochs", type=int, default=None, help="epochs per trial (default: student.epochs)")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = prepared_data(params, tmp)
        teacher, origin = the_teacher(params, data, Path(args.teacher))
        print(f"data: {params.data.source}, {len(data.splits['train'].y)} training images, batch "
              f"{params.train.batch_size}; teacher: {origin}; torch threads: {torch.get_num_threads()}")

        # 1. epochs: plain ViT, distilled live, distilled replayed (cache built once, untimed)
        cache = TeacherCache(tmp / "cache", 2**34)
        epoch_seconds(params, data, "soft", teacher, cache, args.epochs)
        times = {"plain ViT (none)": [], "DeiT arch, no teacher": [], "soft, teacher live": [],
                 "soft, teacher cached": []}
        for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
            times["plain ViT (none)"] += epoch_seconds(params, data, "none", None, None, args.epochs)
            times["DeiT arch, no teacher"] += epoch_seconds(params, data, "control", None, None, args.epochs)
            times["soft, teacher live"] += epoch_seconds(params, data, "soft", teacher, None, args.epochs)
            times["soft, teacher cached"] += epoch_seconds(params, data, "soft", teacher, cache, args.epochs)
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["plain ViT (none)"]
        print("\n1. seconds per epoch (median of", len(times["plain ViT (none)"]), "epochs) and ratio to plain ViT")
        for k, v in med.items():
            print(f"   {k:24s} {v:7.3f} s   {v / base:5.3f}×")
        print(f"   cached / live: {med['soft, teacher cached'] / med['soft, teacher live']:.3f}; cached / no teacher: "
              f"{med['soft, teacher cached'] / med['DeiT arch, no teacher']:.3f}")

        # 2. teacher share and bytes
        t_teacher = teacher_seconds_per_epoch(params, data, teacher, args.repeats * 3)
        files = list((tmp / "cache").glob("*/epoch_*.npy"))
        steps = len(data.splits["train"].y) // params.train.batch_size
        images = steps * params.train.batch_size
        on_disk = statistics.median(f.stat().st_size for f in files) / images
        print(f"\n2. teacher forward alone: {t_teacher:.3f} s per epoch = {t_teacher / med['soft, teacher live']:.1%} of a "
              f"live distilled epoch; (live - cached) / live = "
              f"{1 - med['soft, teacher cached'] / med['soft, teacher live']:.1%}")
        print(f"   cache: {data.num_classes} classes × 2 B = {data.num_classes * 2} B per image per epoch "
              f"({on_disk:.1f} B on disk with the .npy header); {len(files)} epoch files")

        if args.skip_sweep:
            return
        # 3. a sweep of both distilled arms, live vs cached (empty cache at the start)
        over = {}
        if args.trials:
            over["sweep"] = {**params.sweep.model_dump(), "n_trials": args.trials}
        if args.sweep_epochs:
            over["student"] = {**params.student.model_dump(), "epochs": args.sweep_epochs}
            over["sweep"] = {**over.get("sweep", params.sweep.model_dump()),
                             "prune_from_epoch": min(params.sweep.prune_from_epoch, args.sweep_epochs)}
        sweep_params = Params.model_validate({**params.model_dump(), **over})
        live_s, live_w = sweep_pair(sweep_params, data, teacher, None, tmp, "live")
        cached_s, cached_w = sweep_pair(sweep_params, data, teacher, TeacherCache(tmp / "cache2", 2**34), tmp, "cached")
        print(f"\n3. sweep soft + hard, {sweep_params.sweep.n_trials} trials each, {sweep_params.student.epochs} epochs: "
              f"live {live_s:.1f} s, cached {cached_s:.1f} s, cached / live = {cached_s / live_s:.3f}")
        for arm in live_w:
            same = "same" if live_w[arm] == cached_w[arm] else "DIFFERENT"
            print(f"   {arm}: live winner trial {live_w[arm][0]} ({live_w[arm][1]:.4f}), cached winner trial "
                  f"{cached_w[arm][0]} ({cached_w[arm][1]:.4f}): {same}")


if __name__ == "__main__":
    main()
