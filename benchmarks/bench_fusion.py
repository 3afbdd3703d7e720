"""Per-model training throughput of K runs fused into one step, against the same runs one after another.

Run:  python benchmarks/bench_fusion.py [--profile digits|photos-small|keras-flowers] [--ks 1,4,16,32,64]
                                        [--arms none,soft] [--epochs 3] [--json out.json]

Each measurement trains K members of one arm with `fit_group` on the profile's student and views
(synthetic images of the profile's shape and class count): each member its own seed, view seed and
learning rate, as the final stage's seeds are. The unfused reference trains members as groups of one
through the same loop, one after another (the median of `--reference-runs`). Throughput is training
images per second per model, from the epochs after the first (which warms kernels and allocators),
median; an epoch includes its val pass, as in the pipeline. `soft` runs the teacher live on every
distinct view (no cache): what a final stage pays on its first run. The ratio fused / unfused is what
carries to another machine; the absolute numbers are this one's. On a GPU, each fused measurement
samples the GPU's utilisation (MLflow's system-metrics monitor when mlflow is importable, else
nvidia-smi) and prints its median.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from distillery.core.config import parse_params  # noqa: E402
from distillery.data import Prepared  # noqa: E402
from distillery.data.datasets import Split  # noqa: E402
from distillery.profiles import profile_values  # noqa: E402
from distillery.training.loop import Member, fit_group  # noqa: E402
from distillery.recipe.models import build_teacher, count_params  # noqa: E402
from distillery.recipe.arm_runs import arm_run  # noqa: E402

HPARAMS = {"lr": 2e-3, "weight_decay": 0.05, "mixing": 0.0, "drop_path": 0.1, "alpha": 0.5, "tau": 2.0}
SHAPES = {"digits": (1, 10, 1257), "photos-small": (3, 5, 2569), "keras-flowers": (3, 5, 2569)}  # channels, classes, train images


def synthetic(params, channels: int, classes: int, n: int, seed: int = 0) -> Prepared:
    rng = np.random.default_rng(seed)
    size, store = params.data.image_size, params.data.storage_size or params.data.image_size
    split = lambda k: Split(rng.integers(0, 256, (k, channels, store, store), dtype=np.uint8),  # noqa: E731
                            rng.integers(0, classes, k).astype(np.int64))
    return Prepared({"train": split(n), "val": split(min(n // 4, 512))}, [f"c{i}" for i in range(classes)],
                    [0.5] * channels, [0.25] * channels, train_size=size)


def members(params, arm: str, data: Prepared, k: int, epochs: int, first_seed: int) -> list[Member]:
    out = []
    for i in range(k):
        seed = first_seed + i
        plan = arm_run(params, arm, data, {**HPARAMS, "lr": HPARAMS["lr"] * (1 + 0.01 * i)}, seed, f"{arm}-{seed}")
        recipe = dataclasses.replace(plan.recipe, epochs=epochs)
        out.append(Member(plan.spec.build(seed), recipe, plan.name))
    return out


def per_model_rate(group: list[Member], data: Prepared, batch: int) -> float:
    """Training images per second per model: median over the epochs after the first."""
    steps = len(data.splits["train"].y) // batch
    secs = [h["epoch_seconds"] for h in group[0].history]
    return len(group) * steps * batch / statistics.median(secs[1:] or secs)


class GpuUtilisation:
    """Median GPU utilisation (%) while a block runs: MLflow's own sampler when importable, else nvidia-smi."""

    def __init__(self, device: torch.device, name: str):
        self.on, self.name, self.samples, self.run = device.type == "cuda", name, [], None

    def __enter__(self):
        if not self.on:
            return self
        try:
            import mlflow

            mlflow.set_tracking_uri(f"sqlite:///{Path.cwd() / 'bench_fusion_mlflow.db'}")
            mlflow.set_system_metrics_sampling_interval(1)
            self.run = mlflow.start_run(run_name=self.name, log_system_metrics=True)
        except Exception:
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self) -> None:
        while not self.stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.split()[0]))

    def __exit__(self, *exc) -> None:
        if not self.on:
            return
        if self.run is not None:
            import mlflow

            run_id = self.run.info.run_id
            mlflow.end_run()
            hist = mlflow.MlflowClient().get_metric_history(run_id, "system/gpu_0_utilization_percentage")
            self.samples = [m.value for m in hist]
        else:
            self.stop.set()
            self.thread.join()

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="digits")
    ap.add_argument("--ks", default="1,4,16,32,64")
    ap.add_argument("--arms", default="none,soft")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--images", type=int, help="training images (default: the profile's data size)")
    ap.add_argument("--reference-runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    overrides = {"distill": {"teacher": "live"}}
    if args.profile == "photos-small":  # a folder profile: the schema wants a folder, the images are synthetic
        overrides["data"] = {"path": tempfile.mkdtemp(prefix="bench_fusion_")}
    params = parse_params(profile_values(ROOT, args.profile, overrides))
    channels, classes, n = SHAPES.get(args.profile, (3, 5, 2569))
    data = synthetic(params, channels, classes, args.images or n)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = params.train.batch_size
    teacher, _ = build_teacher(params.teacher.model, channels, classes, False, 0)
    probe = members(params, "none", data, 1, 1, 0)[0].net
    print(f"{args.profile}: student {count_params(probe) / 1e6:.2f} M params at {params.data.image_size} px, batch "
          f"{batch}, {len(data.splits['train'].y)} images, {args.epochs} epochs; device "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else f'cpu ({torch.get_num_threads()} threads)'}, "
          f"torch {torch.__version__}", flush=True)
    results = {"profile": args.profile, "device": str(device), "arms": {}}
    for arm in args.arms.split(","):
        t = teacher if arm in ("soft", "hard") else None
        alone = []
        for r in range(args.reference_runs):
            group = fit_group(members(params, arm, data, 1, args.epochs, 100 + r), data, teacher=t, progress=False)
            alone.append(per_model_rate(group, data, batch))
        ref = statistics.median(alone)
        rows = {"unfused_images_per_s": ref, "unfused_runs": alone, "fused": {}}
        print(f"{arm:5s} unfused  {ref:9.1f} img/s per model (runs: {', '.join(f'{a:.0f}' for a in alone)})", flush=True)
        for k in [int(x) for x in args.ks.split(",")]:
            with GpuUtilisation(device, f"{args.profile}-{arm}-K{k}") as util:
                group = fit_group(members(params, arm, data, k, args.epochs, 1), data, teacher=t, progress=False)
            rate = per_model_rate(group, data, batch)
            rows["fused"][k] = {"images_per_s": rate, "ratio": rate / ref, "gpu_util_median": util.median}
            gpu = f"   GPU utilisation median {util.median:.0f} %" if util.median is not None else ""
            print(f"{arm:5s} K = {k:3d}  {rate:9.1f} img/s per model   fused / unfused {rate / ref:5.2f}{gpu}",
                  flush=True)
        if device.type == "cuda":  # CUDA's sync debug mode at "error" inside the fused steps
            try:
                fit_group(members(params, arm, data, 4, 1, 1), data, teacher=t, progress=False, forbid_host_sync=True)
                rows["host_syncs"] = "none"
            except RuntimeError as exc:
                rows["host_syncs"] = str(exc).splitlines()[0][:200]
            print(f"{arm:5s} host syncs inside fused steps (K = 4): {rows['host_syncs']}", flush=True)
        results["arms"][arm] = rows
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
