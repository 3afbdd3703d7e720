"""Which data design gives the most precision per CPU-minute? Seed spread of soft − none per design.

Run:  python benchmarks/design_precision.py --seeds 24 --json benchmarks/results/design_precision.json
      python benchmarks/design_precision.py --cost-epochs 2 --json benchmarks/results/design_cost_cpu.json
      python benchmarks/design_precision.py --summarize SPREAD.json COST.json

A design is a data source and how its images are shared out: `source:train:eval` fractions. For each,
the split is drawn with split seed 101 (never the pipeline's `seed`), a teacher trained on its train part,
then `--seeds` runs of `none` and of `soft` (fixed recipe HPARAMS, fused), each scored on the eval part,
which plays the test split's role here: the pipeline's own val and test splits are never read.

Per design it prints the SD of the per-seed paired difference soft − none (points), split into the part
that scales with 1/(eval images) (images flipping between seeds) and the part that does not (a seed's
model being better or worse overall); `--cost-epochs` measures this CPU's seconds per run-epoch (train
and val) of each design; `--summarize` joins the two into CPU-minutes per ±1 point of half-width.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from distillery.core.config import parse_params  # noqa: E402
from distillery.data import load_prepared, load_source, save_prepared, stratified_split  # noqa: E402
from distillery.evaluation.evaluate import head_predictions  # noqa: E402
from distillery.profiles import profile_values  # noqa: E402
from distillery.reporting.stats import paired_variance_parts  # noqa: E402
from distillery.training.fusion import chunks  # noqa: E402
from distillery.training.loop import Member, fit  # noqa: E402
from distillery.recipe.arm_runs import arm_run, teacher_run  # noqa: E402

HPARAMS = {"lr": 2e-3, "weight_decay": 0.05, "mixing": 0.0, "drop_path": 0.1, "alpha": 0.5, "tau": 2.0}
DESIGNS = ["digits:0.65:0.2", "digits:0.45:0.4", "mnist5k:0.2:0.5", "mnist5k:0.3:0.5"]
SPLIT_SEED = 101


def prepare(design: str, tmp: Path):
    source, train, evaluation = design.split(":")
    rest = 1 - float(train) - float(evaluation)  # the remainder sits in the unused "test" part
    params = parse_params(profile_values(ROOT, "digits", {"data": {
        "source": source, "val_fraction": float(evaluation), "test_fraction": max(rest, 0.001)}}))
    raw = load_source(params.data, cache_dir=tmp)
    idx = stratified_split(raw.labels, params.data.val_fraction, params.data.test_fraction, SPLIT_SEED, raw.classes)
    save_prepared(raw, idx, tmp / design.replace(":", "_"), params.data.source, params.data.image_size)
    return params, load_prepared(tmp / design.replace(":", "_"))


def members(params, arm, data, seeds, epochs=None):
    out = []
    for s in seeds:
        plan = arm_run(params, arm, data, HPARAMS, s, f"{arm}-seed{s}")
        recipe = plan.recipe if epochs is None else dataclasses.replace(plan.recipe, epochs=epochs)
        out.append(Member(plan.spec.build(s), recipe, plan.name))
    return out


def train_arm(params, arm, data, seeds, teacher, group, epochs=None):
    done = []
    for part in chunks(seeds, group):
        done += fit(members(params, arm, data, part, epochs), data, teacher=teacher, progress=False, fused=True)
    return done


def spread(design: str, seeds: int, group: int, tmp: Path) -> dict:
    params, data = prepare(design, tmp)
    t0 = time.time()
    net, run = teacher_run(params, data)
    fit([Member(net, run.recipe, "teacher")], data, progress=False)
    y = data.splits["val"].y
    teacher_acc = float((head_predictions(net, data, "val", params.train)["avg"] == y).mean())
    correct = {}
    for arm in ("none", "soft"):
        trained = train_arm(params, arm, data, list(range(1, seeds + 1)), net if arm == "soft" else None, group)
        correct[arm] = np.stack([head_predictions(m.net, data, "val", params.train)["avg"] == y for m in trained])
    parts = paired_variance_parts(correct["soft"].astype(float), correct["none"].astype(float))
    acc = {a: (c.mean(1) * 100).tolist() for a, c in correct.items()}
    out = {"design": design, "train_images": len(data.splits["train"].y), "eval_images": len(y), "seeds": seeds,
           "teacher_acc": teacher_acc * 100, "acc": acc, "seconds": time.time() - t0, **parts}
    print(f"{design}: train {out['train_images']}, eval {out['eval_images']}; teacher {out['teacher_acc']:.1f}, "
          f"none {np.mean(acc['none']):.2f} ± {np.std(acc['none'], ddof=1):.2f}, soft {np.mean(acc['soft']):.2f} ± "
          f"{np.std(acc['soft'], ddof=1):.2f}; SD(soft − none) {parts['sd']:.2f} (flip part {parts['flip_var']:.2f}, "
          f"model part {parts['model_var']:.2f} points²) [{out['seconds']:.0f} s]", flush=True)
    return out


def cost(design: str, epochs: int, group: int, tmp: Path) -> dict:
    params, data = prepare(design, tmp)
    net, run = teacher_run(params, data)
    fit([Member(net, dataclasses.replace(run.recipe, epochs=1), "teacher")], data, progress=False)
    out = {"design": design, "train_images": len(data.splits["train"].y), "eval_images": len(data.splits["val"].y)}
    for arm in ("none", "soft"):
        t0 = time.time()
        train_arm(params, arm, data, list(range(1, group + 1)), net if arm == "soft" else None, group, epochs)
        out[f"{arm}_s_per_run_epoch"] = (time.time() - t0) / (group * epochs)
    print(f"{design}: none {out['none_s_per_run_epoch']:.3f} s, soft {out['soft_s_per_run_epoch']:.3f} s per run-epoch",
          flush=True)
    return out


def summarize(spreads: list[dict], costs: list[dict], epochs: int = 30, halfwidth: float = 1.0) -> None:
    """CPU-minutes to reach ±halfwidth (normal approximation, 95 %, one comparison) for each design."""
    by = {c["design"]: c for c in costs}
    print(f"{'design':18} {'eval':>5} {'SD Δ':>6} {'flip':>6} {'model':>6} {'seeds':>6} {'CPU min/seed':>13} "
          f"{'CPU min for ±1':>15}")
    for s in spreads:
        c = by.get(s["design"])
        n = math.ceil((1.96 * s["sd"] / halfwidth) ** 2)
        per_seed = (c["none_s_per_run_epoch"] + c["soft_s_per_run_epoch"]) * epochs / 60 if c else math.nan
        print(f"{s['design']:18} {s['eval_images']:5d} {s['sd']:6.2f} {s['flip_var']:6.2f} {s['model_var']:6.2f} "
              f"{n:6d} {per_seed:13.2f} {n * per_seed:15.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--designs", nargs="+", default=DESIGNS)
    ap.add_argument("--seeds", type=int, default=24)
    ap.add_argument("--group", type=int, default=24)
    ap.add_argument("--cost-epochs", type=int, help="time this many epochs per design on this machine instead")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--summarize", nargs=2, type=Path, metavar=("SPREAD", "COST"))
    args = ap.parse_args()
    if args.summarize:
        summarize(*(json.loads(p.read_text()) for p in args.summarize))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for design in args.designs:
            if args.cost_epochs:
                results.append(cost(design, args.cost_epochs, min(args.group, 8), Path(tmp)))
            else:
                results.append(spread(design, args.seeds, args.group, Path(tmp)))
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
