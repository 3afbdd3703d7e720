"""Per-stage wall times of two `dvc repro` logs, side by side, with their ratios.

Run:  python benchmarks/stage_times.py BEFORE.log AFTER.log
Each stage prints "distillery <stage>: ... (<seconds> s)" after DVC's "Running stage '<name>':";
the stage's seconds are its body (imports and DVC's own work excluded). A `time make repro` line
("real 13m47.1s") in a log is shown as the total. Measure both logs on the same machine in one
session: only the ratios mean anything on a machine whose speed drifts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

STAGE = re.compile(r"Running stage '([^']+)'")
BODY = re.compile(r"^distillery \w+: .*\((\d+(?:\.\d+)?) s\)\s*$")
REAL = re.compile(r"^real\s+(\d+)m(\d+(?:\.\d+)?)s")


def stage_seconds(log: Path) -> tuple[dict[str, float], float | None]:
    times, stage, total = {}, None, None
    for raw in log.read_text(errors="replace").splitlines():
        line = raw.split("\r")[-1]  # progress bars rewrite their line with carriage returns
        if m := STAGE.search(line):
            stage = m.group(1)
        elif (m := BODY.match(line)) and stage:
            times[stage] = float(m.group(1))
        elif m := REAL.match(line):
            total = int(m.group(1)) * 60 + float(m.group(2))
    return times, total


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/stage_times.py BEFORE.log AFTER.log")
    (before, total_b), (after, total_a) = (stage_seconds(Path(p)) for p in sys.argv[1:])
    if not before or not after:
        sys.exit(f"no stage timings found in {sys.argv[1] if not before else sys.argv[2]}")
    print(f"{'stage':20s} {'before s':>9s} {'after s':>9s} {'after/before':>13s}")
    for stage in [*before, *(s for s in after if s not in before)]:
        b, a = before.get(stage), after.get(stage)
        ratio = f"{a / b:13.3f}" if a is not None and b else f"{'':13s}"
        print(f"{stage:20s} {b if b is not None else float('nan'):9.1f} {a if a is not None else float('nan'):9.1f} {ratio}")
    sb, sa = sum(before.values()), sum(after.values())
    print(f"{'sum of stage bodies':20s} {sb:9.1f} {sa:9.1f} {sa / sb:13.3f}")
    if total_b and total_a:
        print(f"{'make repro (real)':20s} {total_b:9.1f} {total_a:9.1f} {total_a / total_b:13.3f}")


if __name__ == "__main__":
    main()
