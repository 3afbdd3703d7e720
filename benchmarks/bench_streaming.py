"""The whole pipeline on a generated folder of mixed-size JPEGs at 64 px: streamed batches vs device copy.

Run:  python benchmarks/bench_streaming.py [--per-class 100] [--classes 3] [--out /tmp/bench_streaming]
It generates the photos once (distillery.synthetic), applies the photos-small profile (teacher
from scratch: no internet here; a reduced budget so both runs fit in a session) to two copies of
this project, one with train.device_cache: on and one with off, runs `dvc repro` in each, one after
the other, and prints the wall time of each and the per-stage bodies with their ratios (off / on).
It also checks the two runs' metrics and models are identical: the choice must not change a result.
Compare only ratios from one run of this script: the machine's speed drifts between sessions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from conftest import copy_project, project_env  # noqa: E402  (the tests' copy of the project, and its env)
from stage_times import stage_seconds  # noqa: E402

BUDGET = {  # photos-small's recipe, fewer trials, seeds and epochs (the views, model and size are the profile's)
    "teacher.pretrained": False, "teacher.epochs": 10, "student.epochs": 15, "sweep.n_trials": 3,
    "sweep.prune_from_epoch": 6, "final.seeds": [1, 2, 3],
}


def run(cmd: list[str], cwd: Path, env: dict, log: Path | None = None) -> float:
    t0 = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}" + (f"; see {log}" if log else ""))
    return time.perf_counter() - t0


def digest_outputs(repo: Path) -> dict[str, str]:
    """sha1 of every result: model tensors, sweeps, metrics and histories without wall times or names."""
    import csv
    import io

    import torch

    out = {}
    for path in sorted(repo.glob("models/**/*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        h = hashlib.sha1()
        for key, tensor in state.items():
            h.update(key.encode() + tensor.numpy().tobytes())
        out[str(path.relative_to(repo))] = h.hexdigest()
    timing = {"machine", "epoch_seconds", "study_name", "images_per_second"}
    for path in sorted([*(repo / "metrics").rglob("*"), *(repo / "sweeps").rglob("*")]):
        if not path.is_file() or path.name in ("throughput.json", "study.db"):
            continue
        if path.suffix == ".json":
            blob = json.loads(path.read_text())
            blob = {k: v for k, v in blob.items() if k not in timing} if isinstance(blob, dict) else blob
            text = json.dumps(blob, sort_keys=True)
        elif path.suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(path.read_text())))
            text = json.dumps([{k: v for k, v in r.items() if k not in timing} for r in rows])
        else:
            text = path.read_text(errors="replace")
        out[str(path.relative_to(repo))] = hashlib.sha1(text.encode()).hexdigest()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_streaming"))
    args = ap.parse_args()
    from distillery.synthetic import make_photo_folder

    shutil.rmtree(args.out, ignore_errors=True)
    photos = make_photo_folder(args.out / "photos", per_class=args.per_class, classes=args.classes, seed=0)
    env = project_env()
    walls, logs, digests = {}, {}, {}
    for mode in ("on", "off"):
        repo = copy_project(args.out / f"repo_{mode}", {})
        sets = [f"{k}={json.dumps(v)}" for k, v in {**BUDGET, "data.path": str(photos), "train.device_cache": mode}.items()]
        run([sys.executable, "-m", "distillery.profiles", "photos-small", *sets], repo, env)
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
            run(cmd, repo, env)
        logs[mode] = args.out / f"repro_{mode}.log"
        print(f"dvc repro with train.device_cache={mode} ... (log: {logs[mode]})", flush=True)
        walls[mode] = run(["dvc", "repro"], repo, env, logs[mode])
        digests[mode] = digest_outputs(repo)
        print(f"  {walls[mode]:.1f} s", flush=True)
    data = json.loads((args.out / "repo_on/metrics/data.json").read_text())
    print(f"\n{data['counts']} images, {data['num_classes']} classes, stored {data.get('storage_size')} px, "
          f"trained {data['image_size']} px (median short side of the photos: {data.get('median_short_side')} px)")
    on, _ = stage_seconds(logs["on"])
    off, _ = stage_seconds(logs["off"])
    print(f"{'stage':20s} {'device s':>9s} {'stream s':>9s} {'stream/device':>14s}")
    for stage in on:
        print(f"{stage:20s} {on[stage]:9.1f} {off.get(stage, float('nan')):9.1f} {off.get(stage, float('nan')) / on[stage]:14.3f}")
    print(f"{'dvc repro (wall)':20s} {walls['on']:9.1f} {walls['off']:9.1f} {walls['off'] / walls['on']:14.3f}")
    same = digests["on"] == digests["off"]
    differ = sorted(k for k in digests["on"] if digests["on"][k] != digests["off"].get(k))
    print(f"metrics, sweeps, histories and model tensors identical in both runs (wall times aside): {same}" + ("" if same else f" (differ: {differ[:8]})"))


if __name__ == "__main__":
    main()
