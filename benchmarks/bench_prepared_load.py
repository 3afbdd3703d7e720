"""How fast the prepared format loads, against decoding the same images from PNG files.

Run: python benchmarks/bench_prepared_load.py [--repeats 5]
Prints medians and the ratio measured in this run (timings drift on shared machines: compare
ratios, not seconds).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from distillery.data import RawDataset, load_digits_source, load_folder_source, load_prepared, save_prepared, stratified_split


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from PIL import Image

    raw: RawDataset = load_digits_source(16)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        idx = stratified_split(raw.labels, 0.15, 0.2, seed=0)
        save_prepared(raw, idx, tmp / "prepared", "digits")
        for i, (img, label) in enumerate(zip(raw.images, raw.labels)):
            d = tmp / "folder" / str(label)
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0]).save(d / f"{i}.png")

        def load_all_prepared():
            p = load_prepared(tmp / "prepared")
            return [np.asarray(s.x).sum() for s in p.splits.values()]  # touch every byte

        prepared = timed(load_all_prepared, args.repeats)
        folder = timed(lambda: load_folder_source(tmp / "folder", 16), args.repeats)
    n = len(raw.labels)
    print(f"images: {n}")
    print(f"prepared format (memory-mapped .npy), median of {args.repeats}: {prepared * 1000:.1f} ms")
    print(f"PNG folder decode (reference),        median of {args.repeats}: {folder * 1000:.1f} ms")
    print(f"ratio folder / prepared: {folder / prepared:.0f}x")


if __name__ == "__main__":
    main()
