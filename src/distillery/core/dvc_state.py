"""DVC's own bookkeeping, kept usable across a kill: `python -m distillery.core.dvc_state` (make repair).

DVC rewrites dvc.lock in place after every stage, and .dvc/tmp/rwlock around each stage, without a
temporary file and a rename (dvc/utils/serialize/_common.py: _dump_data opens with "w+"). A SIGKILL, a
pre-emption or a power cut inside that write leaves a truncated file. DVC refuses to start on most of
them ("'./dvc.lock' validation failed", "YAML file structure is corrupted", "Unable to read RWLock-file").

So every stage keeps a copy of dvc.lock as it finds it: DVC has just written it whole, after the stage
before. `repair` (run by `make repro` before `dvc repro`, and by `make repair`) puts that copy back when
DVC cannot read the lock, and removes an unreadable rwlock, which only lists DVC processes that are gone.
A rerun then redoes at most the stage whose entry the copy lacks, and that stage restores its finished
work (checkpoints/finished/, the study in study.db) without training an epoch.

Only a lock that DVC refuses is replaced, and it is kept as dvc.lock.torn. A lock that DVC reads is left
alone, hand-edited or cut at a point DVC accepts: DVC reruns the stages it lacks, which restore their
finished work the same way.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

from .files import atomic_path
from .paths import project_root

LOCK = "dvc.lock"
GOOD_COPY = Path("checkpoints") / "dvc.lock.good"  # ignored by git, removed by make clean-outputs
TORN = "dvc.lock.torn"


def _refusal(path: Path) -> Exception | None:
    """DVC's own loader and schema judge the lock, so that "readable" here means readable to the `dvc repro`
    that follows: the exception DVC raises on it, or None when DVC reads it, it does not exist, or DVC is not
    installed (a remote sweep worker: nothing can be judged there, and no DVC there writes the lock)."""
    if not _dvc_installed() or not path.exists():
        return None
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils import strictyaml

    try:
        strictyaml.load(str(path), COMPILED_LOCKFILE_SCHEMA)
    except Exception as exc:  # YAMLSyntaxError, YAMLValidationError, EncodingError: all mean "refused"
        return exc
    return None


def _dvc_installed() -> bool:
    return importlib.util.find_spec("dvc") is not None


def lock_problem(path: Path) -> str | None:
    """Why DVC would refuse this dvc.lock, in DVC's words; None when it would not (see _refusal)."""
    exc = _refusal(path)
    return None if exc is None else (" ".join(str(exc).split()) or type(exc).__name__)


def cut_kind(path: Path) -> str:
    """How DVC takes a lock: "read", or refused as "yaml" or by its "schema" (tests, benchmarks/lock_cuts.py)."""
    exc = _refusal(path)
    if exc is None:
        return "read"
    from dvc.utils.strictyaml import YAMLSyntaxError

    return "yaml" if isinstance(exc, YAMLSyntaxError) else "schema"


def keep_good_lock(root: Path) -> None:
    """Copy dvc.lock to checkpoints/ when DVC reads it (a stage calls this as it starts); never without DVC."""
    lock = root / LOCK
    if not lock.exists() or not _dvc_installed() or _refusal(lock) is not None:
        return
    with atomic_path(root / GOOD_COPY) as tmp:
        shutil.copyfile(lock, tmp)


def repair(root: Path) -> list[str]:
    """Put DVC's files back into a state `dvc repro` can start from; one line per thing done."""
    done = []
    problem = lock_problem(root / LOCK)
    if problem is not None:
        shutil.copyfile(root / LOCK, root / TORN)
        good = root / GOOD_COPY
        if good.exists() and lock_problem(good) is None:
            with atomic_path(root / LOCK) as tmp:
                shutil.copyfile(good, tmp)
            done.append(f"{LOCK} was cut short while DVC wrote it ({problem[:120]}); kept it as {TORN} and "
                        f"restored the copy taken when the last stage started ({GOOD_COPY}): dvc repro redoes at "
                        "most that stage, from its finished work")
        else:
            (root / LOCK).unlink()
            done.append(f"{LOCK} was cut short while DVC wrote it ({problem[:120]}); kept it as {TORN} and removed "
                        "it (no earlier copy): dvc repro reruns every stage, each restoring its finished work")
    rwlock = root / ".dvc" / "tmp" / "rwlock"
    if rwlock.exists() and not _readable_json(rwlock):
        rwlock.unlink()
        done.append(f"removed {rwlock.relative_to(root)}, cut short while DVC wrote it (it lists running DVC "
                    "processes only)")
    return done


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (ValueError, OSError):
        return False
    return True


def main() -> int:
    """Repair while holding DVC's repository lock, so that a running `dvc repro` is never interfered with."""
    root = project_root()
    try:
        from dvc.lock import Lock, LockError
    except ImportError:
        print("distillery repair: error: DVC is not installed here; run it from the project's .venv "
              "(make repair)", file=sys.stderr)
        return 2
    try:
        if (root / ".dvc").is_dir():
            (root / ".dvc" / "tmp").mkdir(exist_ok=True)
            with Lock(str(root / ".dvc" / "tmp" / "lock")):
                done = repair(root)
        else:  # not a DVC project: no DVC process to wait for
            done = repair(root)
    except LockError:
        print("distillery repair: error: another DVC process is running in this project (it holds .dvc/tmp/lock); "
              "repair after it ends", file=sys.stderr)
        return 2
    for line in done:
        print(f"distillery repair: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
