"""Does fusion change the statistics? The seed-to-seed spread of fused runs against the same seeds alone.

Run:  python benchmarks/fusion_seed_spread.py [--seeds 32] [--arm none] [--group 16] [--epochs N]
                                              [--json benchmarks/results/fusion_seed_spread_cpu.json]
      python benchmarks/fusion_seed_spread.py --summarize benchmarks/results/fusion_seed_spread_cpu.json

Trains `--seeds` runs of one arm on the built-in digits at the default recipe (params.yaml; the
hyperparameters below, fixed), each seed its own initial weights, views and drop-path draws: once each
seed alone (a group of one), once in fused groups of `--group`. Reads only the val split. Prints per mode
the mean and SD of the last epoch's val accuracy, the F-test 95 % interval of the ratio of the two
variances (fused / alone; it should cover 1), and the paired per-seed differences. A fused run and its
run alone differ in floating-point summation order only, which training amplifies over the epochs: the
pairs need not coincide, but the two spreads must agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from distillery.core.config import parse_params  # noqa: E402
from distillery.data import load_prepared, load_source, save_prepared, stratified_split  # noqa: E402
from distillery.profiles import profile_values  # noqa: E402
from distillery.training.fusion import chunks  # noqa: E402
from distillery.training.loop import Member, fit  # noqa: E402
from distillery.recipe.arm_runs import arm_run  # noqa: E402

HPARAMS = {"lr": 2e-3, "weight_decay": 0.05, "mixing": 0.0, "drop_path": 0.1, "alpha": 0.5, "tau": 2.0}


def member(params, arm: str, data, seed: int, epochs: int | None) -> Member:
    plan = arm_run(params, arm, data, HPARAMS, seed, f"{arm}-seed{seed}")
    recipe = plan.recipe if epochs is None else dataclasses.replace(plan.recipe, epochs=epochs)
    return Member(plan.spec.build(seed), recipe, plan.name)


def final_val_acc(group: list[Member]) -> list[float]:
    return [m.history[-1]["val_acc"] * 100 for m in group]


def variance_ratio_interval(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """var(a) / var(b) and its F interval (normal data, independent samples: conservative for paired ones)."""
    ratio = statistics.variance(a) / statistics.variance(b)
    lo_q, hi_q = stats.f.ppf([(1 - level) / 2, (1 + level) / 2], len(a) - 1, len(b) - 1)
    return ratio, ratio / hi_q, ratio / lo_q


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--arm", default="none", choices=["none", "control", "soft", "hard"])
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--epochs", type=int, help="default: student.epochs of params.yaml")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--summarize", type=Path, help="only print the comparison in a JSON this script wrote")
    args = ap.parse_args()
    if args.summarize:
        summarize(json.loads(args.summarize.read_text()))
        return
    if args.arm in ("soft", "hard"):
        raise SystemExit("fusion_seed_spread: the distilled arms need a trained teacher; use none or control")

    params = parse_params(profile_values(ROOT, "digits", {}))
    with tempfile.TemporaryDirectory() as tmp:
        raw = load_source(params.data, cache_dir=Path(tmp))
        idx = stratified_split(raw.labels, params.data.val_fraction, params.data.test_fraction, params.seed, raw.classes)
        save_prepared(raw, idx, Path(tmp) / "prepared", params.data.source, params.data.image_size)
        data = load_prepared(Path(tmp) / "prepared")
        seeds = list(range(1, args.seeds + 1))
        t0 = time.time()
        alone = [final_val_acc(fit([member(params, args.arm, data, s, args.epochs)], data, progress=False))[0]
                 for s in seeds]
        t_alone = time.time() - t0
        t0 = time.time()
        fused = [acc for part in chunks(seeds, args.group)
                 for acc in final_val_acc(fit([member(params, args.arm, data, s, args.epochs) for s in part],
                                                    data, progress=False, fused=True))]
        t_fused = time.time() - t0

    out = {"arm": args.arm, "seeds": seeds, "group": args.group, "epochs": args.epochs or params.student.epochs,
           "hparams": HPARAMS, "val_acc_alone": alone, "val_acc_fused": fused,
           "one_val_image": 100 / len(data.splits["val"].y), "seconds_alone": t_alone, "seconds_fused": t_fused}
    out.update(summarize(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def summarize(out: dict) -> dict:
    """Print and return the comparison of a run's (or a saved JSON's) two lists of val accuracies."""
    alone, fused = out["val_acc_alone"], out["val_acc_fused"]
    diffs = [f - a for f, a in zip(fused, alone)]
    ratio, lo, hi = variance_ratio_interval(fused, alone)
    got = {"mean_alone": statistics.mean(alone), "sd_alone": statistics.stdev(alone),
           "mean_fused": statistics.mean(fused), "sd_fused": statistics.stdev(fused),
           "variance_ratio": ratio, "variance_ratio_95": [lo, hi], "paired_sd": statistics.stdev(diffs),
           "paired_correlation": statistics.correlation(alone, fused),
           "paired_max_abs_diff": max(map(abs, diffs)), "paired_identical": sum(d == 0 for d in diffs)}
    print(f"{out['arm']}, {len(alone)} seeds, {out['epochs']} epochs, val accuracy (%)")
    print(f"  alone : mean {got['mean_alone']:.2f}  SD {got['sd_alone']:.2f}   ({out['seconds_alone']:.0f} s)")
    print(f"  fused : mean {got['mean_fused']:.2f}  SD {got['sd_fused']:.2f}   (groups of {out['group']}, "
          f"{out['seconds_fused']:.0f} s)")
    print(f"  variance fused / alone {ratio:.3f}, 95 % F interval [{lo:.2f}, {hi:.2f}]")
    print(f"  paired (same seed): {got['paired_identical']}/{len(alone)} equal, SD of fused - alone "
          f"{got['paired_sd']:.2f}, correlation {got['paired_correlation']:.2f}, largest |difference| "
          f"{got['paired_max_abs_diff']:.2f} (one val image = {out['one_val_image']:.2f})")
    return got


if __name__ == "__main__":
    main()
