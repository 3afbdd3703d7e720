"""What a kill inside DVC's in-place rewrite of dvc.lock leaves, by kind: cut the lock at every STEP-th byte
and ask DVC's own loader and schema (core/dvc_state.py: cut_kind) whether it would start from it.

    python benchmarks/lock_cuts.py [dvc.lock] [--step 211]

Prints how many cuts DVC reads as a shorter lock (it reruns the stages the lock lacks), and how many it
refuses as YAML or by its schema (`make repair` restores the last stage's copy). No timing: counts only.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

from distillery.core.dvc_state import cut_kind


KINDS = {"read": "read by DVC as a shorter lock", "yaml": "refused as YAML", "schema": "refused by DVC's schema"}


def kind_of(cut: bytes, scratch: Path) -> str:
    scratch.write_bytes(cut)
    return KINDS[cut_kind(scratch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", nargs="?", default="dvc.lock")
    parser.add_argument("--step", type=int, default=211)
    args = parser.parse_args()
    whole = Path(args.lock).read_bytes()
    offsets = range(0, len(whole), args.step)
    with tempfile.TemporaryDirectory() as tmp:
        counts = collections.Counter(kind_of(whole[:offset], Path(tmp) / "dvc.lock") for offset in offsets)
    print(f"{args.lock}: {len(whole)} bytes, {len(offsets)} cuts (every {args.step}th byte from 0)")
    for kind, n in counts.most_common():
        print(f"  {kind}: {n}")


if __name__ == "__main__":
    main()
