"""What a kill inside DVC's in-place rewrite of dvc.lock leaves, and whether `make repair` always gets DVC going
again: cut the lock at every byte, repair each cut (core/dvc_state.py: repair), then ask DVC for the status
its `dvc repro` starts from, in a scratch copy of a finished project. A dead end is a repaired lock on which
DVC's status raises (what made `dvc repro` fail with an empty "failed to reproduce" on a `hash: md` cut).

    python benchmarks/lock_cuts.py PROJECT [--lock LOCK] [--written report] [--every 1]

PROJECT: a project after a finished `make repro` (its data, models and metrics are what DVC hashes; it is
hardlinked, never written). LOCK: the lock to cut (PROJECT's by default; the committed dvc.lock can be cut
against another machine's run of the same params: its hashes then differ, which DVC reports as changed,
not as an error). The good copy a stage keeps is the lock before the stage being written (`--written`,
`report` by default: the stage every repro writes last) had its entry; each cut is also repaired with no
good copy. Prints counts by kind of cut and by what the repair did, the dead ends, and which stages DVC would
rerun after each kind of repair. No timing: counts only.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from distillery.core.dvc_state import LOCK, declared_shapes
from distillery.core.lock_cuts import Judged, judge_cuts, scratch_copy, without_entry


def report(size: int, n: int, every: int, written: str, judged: Judged) -> None:
    table, reruns, dead = judged.table, judged.reruns, judged.dead
    print(f"{n} cuts of a {size}-byte lock (every {every} byte(s) from 0), each repaired with the good copy "
          f"(the lock without {written}'s entry) and with none; {judged.distinct} distinct repaired locks given to DVC")
    for (copy, kind, action), count in sorted(table.items()):
        print(f"  {copy:9s}  {kind:62s} {action:8s} {count:6d}")
    print("stages DVC's status would rerun, by repair:")
    for (copy, action), stages in sorted(reruns.items()):
        for names, count in stages.most_common(4):
            print(f"  {copy:9s} {action:8s} {count:6d}  {names[:150]}")
    print(f"dead ends (DVC's status raises on the repaired lock): {len(dead)}")
    for offset, copy, kind, error in dead[:20]:
        print(f"  byte {offset} ({kind}, {copy}): {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path, help="a project after a finished make repro")
    parser.add_argument("--lock", type=Path, help="the lock to cut (default: PROJECT/dvc.lock)")
    parser.add_argument("--written", default="report", help="the stage whose write is cut (its good copy)")
    parser.add_argument("--every", type=int, default=1, help="cut at every N-th byte (1: every byte)")
    args = parser.parse_args()
    whole = (args.lock or args.project / LOCK).read_bytes()
    try:
        good = without_entry(whole, args.written)
    except ValueError as exc:
        raise SystemExit(f"lock_cuts: error: {exc} (--written)") from None
    offsets = range(0, len(whole), args.every)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = scratch_copy(args.project.resolve(), Path(tmp) / "project")
        judged = judge_cuts(whole, offsets, scratch, good, declared_shapes(scratch))
    report(len(whole), len(offsets), args.every, args.written, judged)


if __name__ == "__main__":
    main()
