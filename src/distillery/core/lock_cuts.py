"""Cutting dvc.lock the way a kill inside DVC's in-place rewrite does, repairing each cut (dvc_state.repair),
and asking DVC for the status a `dvc repro` starts from: a repaired lock on which DVC raises is a dead end.
Used by benchmarks/lock_cuts.py (every byte of a lock) and the end-to-end test (every byte of one entry)."""

from __future__ import annotations

import collections
import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from distillery.core.dvc_state import GOOD_COPY, LOCK, cut_kind, repair, short_entry

HEADER = re.compile(rb"^  [^ \n][^\n]*:\n", re.MULTILINE)  # a stage entry's first line in a lock
SKIP = {".venv", "mlflow.db", "mlruns"}  # large, and never read by DVC's status


def without_entry(whole: bytes, stage: str) -> bytes:
    """The lock as it was before `stage` had an entry (the good copy a stage's start keeps)."""
    starts = [m.start() for m in HEADER.finditer(whole)] + [len(whole)]
    for begin, end in zip(starts, starts[1:]):
        if whole[begin:end].startswith(f"  {stage}:\n".encode()):
            return whole[:begin] + whole[end:]
    raise ValueError(f"the lock has no entry for stage {stage!r}")


def scratch_copy(project: Path, into: Path) -> Path:
    """A hardlinked copy of the project (DVC only reads the outputs; DVC needs its git repository), without
    DVC's tmp state, its cache and the venv."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = SKIP | ({"tmp", "cache"} if Path(folder).name == ".dvc" else set())
        return {n for n in names if n in skipped or n.startswith(LOCK)}

    shutil.copytree(project, into, symlinks=True, ignore=ignore, copy_function=os.link)
    shutil.rmtree(into / ".git", ignore_errors=True)
    shutil.copytree(project / ".git", into / ".git", symlinks=True)  # a real copy: git may write its index
    (into / ".dvc" / "tmp").mkdir(exist_ok=True)
    (into / GOOD_COPY).unlink(missing_ok=True)  # a hardlink: never written through
    return into


LINE_END_KINDS = {"read": "at a line's end: usable", "yaml": "at a line's end: refused as YAML",
                  "schema": "at a line's end: refused by DVC's schema", "torn": "at a line's end: read, an entry torn"}


def kind_of_cut(cut: bytes, scratch: Path, declared: dict) -> str:
    """What the cut (written to scratch's lock) is to the repair: where it fell, and what DVC makes of it."""
    if cut and not cut.endswith(b"\n"):
        return "inside a line"
    kind = LINE_END_KINDS[cut_kind(scratch / LOCK)]
    if kind.endswith("usable") and short_entry(scratch / LOCK, declared) is not None:
        return "at a line's end: last entry short of its declared deps/outs"
    return kind


def dvc_status(scratch: Path) -> tuple[str | None, tuple[str, ...]]:
    """DVC's status on the repaired lock: (the error it raises or None, the stages it would rerun)."""
    from dvc.repo import Repo

    try:
        with Repo(str(scratch)) as repo:
            changed = repo.status()
    except Exception as exc:  # noqa: BLE001 - any error is what the benchmark counts
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}", ()
    return None, tuple(sorted(changed))


def write_fresh(path: Path, data: bytes | None) -> None:
    """Replace the file, never writing through a hardlink into the project."""
    path.unlink(missing_ok=True)
    if data is not None:
        path.write_bytes(data)


@dataclass
class Judged:
    """What the repair made of a set of cuts."""

    table: collections.Counter = field(default_factory=collections.Counter)  # (copy, kind, action) -> cuts
    reruns: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))  # stages DVC reruns
    dead: list = field(default_factory=list)  # (offset, copy, kind, DVC's error)
    distinct: int = 0  # repaired locks given to DVC's status


def judge_cuts(whole: bytes, offsets, scratch: Path, good: bytes, declared: dict) -> Judged:
    """Cut `whole` at each offset inside `scratch` (scratch_copy), repair it with the good copy `good` and with
    none, and ask DVC's status of each distinct repaired lock once."""
    statuses: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    judged = Judged()
    for offset in tqdm(offsets, desc="cuts", unit="cut", mininterval=5):
        cut = whole[:offset]
        for copy in ("good copy", "no copy"):
            write_fresh(scratch / GOOD_COPY, good if copy == "good copy" else None)
            write_fresh(scratch / LOCK, cut)
            kind = kind_of_cut(cut, scratch, declared)
            done = repair(scratch, declared)
            action = "kept" if not done else ("restored" if "restored" in done[0] else "removed")
            after = (scratch / LOCK).read_bytes() if (scratch / LOCK).exists() else None
            key = "none" if after is None else hashlib.md5(after).hexdigest()
            if key not in statuses:
                statuses[key] = dvc_status(scratch)
            error, changed = statuses[key]
            judged.table[(copy, kind, action)] += 1
            judged.reruns[(copy, action)][", ".join(changed) or "nothing"] += 1
            if error is not None:
                judged.dead.append((offset, copy, kind, error))
    judged.distinct = len(statuses)
    return judged
