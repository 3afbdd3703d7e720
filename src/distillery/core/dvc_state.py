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

A lock is judged by whether DVC can *use* it, not only read it: DVC's loader and schema accept many cuts
that its repro then fails on (`hash: md`, an unknown hash name: an empty "failed to reproduce" every time)
or silently misreads (half an md5). So a lock must also end where DVC ends a write (a newline) and every
entry in it must be whole: a command, and each dep and out with its path, a known hash name, a full md5,
its size (and file count for a directory). That is "torn", and it is replaced. The last entry may further
lack deps, params or outs its stage declares in dvc.yaml (a cut at a line's end inside it): `repair`
then restores the good copy too, and keeps the lock when there is none (DVC reruns that stage).

A replaced lock is kept as dvc.lock.torn. A lock that passes is left alone, hand-edited or cut between two
entries: DVC reruns the stages it lacks, which restore their finished work the same way.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

from .files import atomic_path
from .paths import project_root

LOCK = "dvc.lock"
GOOD_COPY = Path("checkpoints") / "dvc.lock.good"  # ignored by git, removed by make clean-outputs
TORN = "dvc.lock.torn"
# DVC writes a run-cache entry to `.<random>.tmp` beside it, then renames it (dvc/stage/cache.py: save); a
# kill between leaves the .tmp, which StageCache._load takes as the stage's newest entry
RUN_CACHE = Path(".dvc") / "cache" / "runs"


MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")
HASH_NAMES = (None, "md5")  # what DVC 3 writes ("hash: md5"; absent on a legacy entry): dvc/stage/serialize.py


def _refusal(path: Path) -> Exception | None:
    """DVC's own loader and schema judge the lock, so that "readable" here means readable to the `dvc repro`
    that follows: the exception DVC raises on it, or None when DVC reads it, it does not exist, or DVC is not
    installed (a remote sweep worker: nothing can be judged there, and no DVC there writes the lock)."""
    if not _dvc_installed() or not path.exists():
        return None
    return _refusal_of(path.read_bytes(), path.name)


@functools.lru_cache(maxsize=8)  # the benchmark judges the same good copy once per cut: a parse costs ~0.3 s
def _refusal_of(text: bytes, name: str) -> Exception | None:
    """dvc.utils.strictyaml.load on these bytes: its parse, then its schema, raising what it raises."""
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils import strictyaml

    try:
        decoded = text.decode("utf-8")
        try:
            data = strictyaml.parse_yaml(decoded, name, typ="safe")
        except strictyaml.YAMLFileCorruptedError as exc:
            raise strictyaml.YAMLSyntaxError(name, decoded, exc) from exc.__cause__
        strictyaml.validate(data, COMPILED_LOCKFILE_SCHEMA, text=decoded, path=name)
    except Exception as exc:  # YAMLSyntaxError, YAMLValidationError, a decode error: all mean "refused"
        return exc
    return None


def _dvc_installed() -> bool:
    return importlib.util.find_spec("dvc") is not None


def item_problem(item: object) -> str | None:
    """What keeps DVC from using one dep or out of a lock entry: a cut inside it leaves a short value."""
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        return "a dep or out without its path"
    where = item["path"]
    if item.get("hash") not in HASH_NAMES:
        return f"{where}: hash name {item.get('hash')!r} unknown to DVC"
    md5 = item.get("md5")
    if not isinstance(md5, str) or not MD5.fullmatch(md5):
        return f"{where}: md5 {md5!r} is not a whole md5"
    if not isinstance(item.get("size"), int) or (md5.endswith(".dir") and not isinstance(item.get("nfiles"), int)):
        return f"{where}: its size or file count is missing"
    return None


def entry_problem(name: str, entry: object) -> str | None:
    """What keeps DVC from using one stage's entry, from the entry alone (no dvc.yaml needed)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("cmd"), str):
        return f"stage {name}: no command"
    for section in ("deps", "outs"):
        for item in entry.get(section) or []:
            if (problem := item_problem(item)) is not None:
                return f"stage {name}: {problem}"
    return None


def lock_problem(path: Path) -> str | None:
    """Why DVC could not use this lock, whatever dvc.yaml says: not ended by a newline (DVC ends every write
    with one; checked first, as it is cheap), refused by DVC's loader or schema, or an entry cut inside it.
    None: usable, no lock, or no DVC here to judge it (see _refusal)."""
    if not path.exists() or not _dvc_installed():
        return None
    return _problem_of(path.read_bytes(), path.name)


@functools.lru_cache(maxsize=8)  # repair judges the good copy on every call, the benchmark on every cut
def _problem_of(text: bytes, name: str) -> str | None:
    if text and not text.endswith(b"\n"):
        return "it does not end with a newline, as every lock DVC writes does"
    exc = _refusal_of(text, name)
    if exc is not None:
        return " ".join(str(exc).split()) or type(exc).__name__
    stages = (_load(text) or {}).get("stages") or {}
    return next((p for name, entry in stages.items() if (p := entry_problem(name, entry)) is not None), None)


def _load(text: bytes):
    """PyYAML's safe load (its C loader when built: a lock is ~60 KB); DVC has already accepted the text."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def short_entry(path: Path, declared: dict[str, tuple[int, int, bool]]) -> str | None:
    """The lock's last entry, when it lacks deps, params or outs its stage declares: `declared` maps a stage
    name to (deps, outs, has params) as dvc.yaml defines it now. Only the last entry can be cut short (a torn
    write is a prefix of a whole lock); a stage whose definition grew since reruns either way."""
    stages = (_load(path.read_bytes()) or {}).get("stages") or {}
    if not stages:
        return None
    name, entry = list(stages.items())[-1]
    if name not in declared or not isinstance(entry, dict):
        return None
    deps, outs, has_params = declared[name]
    if len(entry.get("deps") or []) < deps or len(entry.get("outs") or []) < outs or (has_params and
                                                                                       not entry.get("params")):
        return f"stage {name}: its entry ends before all the deps, params and outs dvc.yaml declares"
    return None


def declared_shapes(root: Path) -> dict[str, tuple[int, int, bool]]:
    """Each stage's (deps, outs, has params) as DVC resolves dvc.yaml (matrix stages included), keyed by its
    name as dvc.lock writes it (not `addressing`, which names dvc.yaml relative to the working directory);
    empty when dvc.yaml cannot be read (DVC says why on its own when it runs)."""
    try:
        from dvc.dependency.param import ParamsDependency
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            return {s.name: (sum(not isinstance(d, ParamsDependency) for d in s.deps), len(s.outs),
                                   any(isinstance(d, ParamsDependency) for d in s.deps))
                    for s in repo.index.stages}
    except Exception:  # noqa: BLE001 - any DVC error here means "no shapes to compare with", never a crash
        return {}


def cut_kind(path: Path) -> str:
    """How DVC takes a lock: "read", refused as "yaml" or by its "schema", or "torn" (read, but not usable:
    lock_problem) (tests, benchmarks/lock_cuts.py)."""
    exc = _refusal(path)
    if exc is None:
        return "torn" if lock_problem(path) is not None else "read"
    from dvc.utils.strictyaml import YAMLSyntaxError

    return "yaml" if isinstance(exc, YAMLSyntaxError) else "schema"


def keep_good_lock(root: Path) -> None:
    """Copy dvc.lock to checkpoints/ when DVC can use it (a stage calls this as it starts); never without DVC.
    The copy is judged without dvc.yaml: DVC holds the repository while a stage runs, and has just written it."""
    lock = root / LOCK
    if not lock.exists() or not _dvc_installed() or lock_problem(lock) is not None:
        return
    with atomic_path(root / GOOD_COPY) as tmp:
        shutil.copyfile(lock, tmp)


def repair(root: Path, declared: dict[str, tuple[int, int, bool]] | None = None) -> list[str]:
    """Put DVC's files back into a state `dvc repro` can start from and use; one line per thing done.
    `declared`: the stages' shapes (declared_shapes, read from dvc.yaml when not given)."""
    done = []
    lock, good = root / LOCK, root / GOOD_COPY
    problem = lock_problem(lock)
    good_ok = good.exists() and lock_problem(good) is None
    if problem is None and lock.exists() and good_ok:
        problem = short_entry(lock, declared_shapes(root) if declared is None else declared)
    if problem is not None:
        shutil.copyfile(lock, root / TORN)
        if good_ok:
            with atomic_path(lock) as tmp:
                shutil.copyfile(good, tmp)
            done.append(f"{LOCK} was cut short while DVC wrote it ({problem[:120]}); kept it as {TORN} and "
                        f"restored the copy taken when the last stage started ({GOOD_COPY}): dvc repro redoes at "
                        "most that stage, from its finished work")
        else:
            lock.unlink()
            done.append(f"{LOCK} was cut short while DVC wrote it ({problem[:120]}); kept it as {TORN} and removed "
                        "it (no earlier copy): dvc repro reruns every stage, each restoring its finished work")
    rwlock = root / ".dvc" / "tmp" / "rwlock"
    if rwlock.exists() and not _readable_json(rwlock):
        rwlock.unlink()
        done.append(f"removed {rwlock.relative_to(root)}, cut short while DVC wrote it (it lists running DVC "
                    "processes only)")
    stray = sorted((root / RUN_CACHE).glob("*/*/*.tmp"))
    for path in stray:
        path.unlink()
    if stray:
        done.append(f"removed {len(stray)} half-written run-cache entr{'y' if len(stray) == 1 else 'ies'} from "
                    f"{RUN_CACHE} (DVC reads the newest file of a stage's folder, finished or not)")
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
