"""The optimizer step of the default student: torch's fused AdamW (what the loop uses) against the
default (single-tensor on CPU) and foreach implementations, side by side in one run.

Run (from the project root, venv active):  python benchmarks/bench_optimizer.py [--repeats 3] [--steps 100]
Prints the median milliseconds per step and the ratio to the default implementation.
"""

import argparse
import statistics
import time

import torch
from timm.optim import create_optimizer_v2

from distillery.core.config import load_params
from distillery.recipe.models import vit_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    p = load_params("params.yaml")
    spec = vit_spec("s", p.student.model, p.data.image_size, 1, 10, p.student, 0.05)
    variants = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):  # interleaved: drift hits every variant alike
        for name, kwargs in variants.items():
            net = spec.build(0)
            opt = create_optimizer_v2(net, opt="adamw", lr=1e-3, weight_decay=0.05, **kwargs)
            for q in net.parameters():
                q.grad = torch.randn_like(q)
            for _ in range(5):
                opt.step()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                opt.step()
            times[name].append((time.perf_counter() - t0) / args.steps * 1000)
    base = statistics.median(times["default"])
    print(f"AdamW step, {sum(q.numel() for q in spec.build(0).parameters()):,} parameters, "
          f"{torch.get_num_threads()} threads")
    for name, t in times.items():
        print(f"  {name:8s} {statistics.median(t):6.3f} ms   {statistics.median(t) / base:5.3f}× default")


if __name__ == "__main__":
    main()
