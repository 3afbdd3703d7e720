"""Repairing DVC's own files after a kill inside its in-place rewrites (core/dvc_state.py): which locks are
replaced, which are left alone, and that a running DVC is never interfered with. The real pipeline's
recovery is test_pipeline_e2e.py::test_a_lock_cut_short_anywhere_is_recovered_without_an_epoch."""

import subprocess
import sys
from pathlib import Path

import pytest

from distillery.core.dvc_state import GOOD_COPY, TORN, cut_kind, keep_good_lock, lock_problem, main, repair

ROOT = Path(__file__).resolve().parents[1]
WHOLE = (ROOT / "dvc.lock").read_bytes()  # a lock DVC wrote


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cut_at(kind: str) -> int:
    """The offset nearest the end whose prefix DVC refuses as `kind` (YAML or schema)."""
    for offset in range(len(WHOLE) - 1, 0, -1):
        Path("probe.lock").write_bytes(WHOLE[:offset])
        if cut_kind(Path("probe.lock")) == kind:
            return offset
    raise AssertionError(kind)


def test_dvc_judges_whole_empty_and_cut_locks(project):
    lock = project / "dvc.lock"
    assert lock_problem(lock) is None  # none at all: DVC starts afresh
    lock.write_bytes(WHOLE)
    assert lock_problem(lock) is None
    lock.write_bytes(b"")
    assert "validation failed" in lock_problem(lock)
    lock.write_bytes(WHOLE[:cut_at("yaml")])
    assert "YAML file structure is corrupted" in lock_problem(lock)
    lock.write_bytes(WHOLE[:cut_at("schema")])
    assert "validation failed" in lock_problem(lock)


@pytest.mark.parametrize("kind", ["empty", "yaml", "schema"])
def test_a_refused_lock_is_kept_aside_and_the_good_copy_restored(project, kind):
    good = WHOLE.replace(b"schema: '2.0'", b"schema: '2.0'\n# the copy", 1)  # valid, and told apart from WHOLE
    (project / GOOD_COPY).parent.mkdir()
    (project / GOOD_COPY).write_bytes(good)
    torn = b"" if kind == "empty" else WHOLE[:cut_at(kind)]
    (project / "dvc.lock").write_bytes(torn)
    done = repair(project)
    assert len(done) == 1 and "dvc.lock.torn" in done[0] and "restored" in done[0]
    assert (project / "dvc.lock").read_bytes() == good and (project / TORN).read_bytes() == torn


def test_without_a_good_copy_a_refused_lock_is_moved_aside(project):
    (project / "dvc.lock").write_bytes(WHOLE[:cut_at("yaml")])
    done = repair(project)
    assert len(done) == 1 and "reruns every stage" in done[0]
    assert not (project / "dvc.lock").exists() and (project / TORN).exists()


def test_a_lock_dvc_reads_is_never_replaced_even_if_it_differs(project):
    """A hand-edited lock, or one cut where DVC still reads it: DVC reruns what it lacks; nothing is lost."""
    (project / GOOD_COPY).parent.mkdir()
    (project / GOOD_COPY).write_bytes(WHOLE)
    for valid in (WHOLE.replace(b"md5: ", b"md5: 0", 1), WHOLE[:WHOLE.index(b"\n  teacher:") + 1]):
        (project / "dvc.lock").write_bytes(valid)
        assert repair(project) == []
        assert (project / "dvc.lock").read_bytes() == valid and not (project / TORN).exists()


def test_a_stage_keeps_only_a_lock_dvc_reads(project):
    (project / "dvc.lock").write_bytes(WHOLE)
    keep_good_lock(project)
    assert (project / GOOD_COPY).read_bytes() == WHOLE
    (project / "dvc.lock").write_bytes(WHOLE[:cut_at("yaml")])
    keep_good_lock(project)  # a torn lock never replaces the good copy
    assert (project / GOOD_COPY).read_bytes() == WHOLE


def test_an_unreadable_rwlock_is_removed_and_a_readable_one_kept(project):
    rwlock = project / ".dvc" / "tmp" / "rwlock"
    rwlock.write_text('{"read": {}, "write": {"x": {"pid": 1, "cmd": "dvc repro"}}}')
    assert repair(project) == []
    assert rwlock.exists()
    rwlock.write_text('{"read": {}, "wri')
    done = repair(project)
    assert len(done) == 1 and "rwlock" in done[0] and not rwlock.exists()


def test_repair_waits_for_no_running_dvc_and_refuses_in_one_line(project, capsys):
    """While another process holds DVC's repository lock (a dvc repro may be mid-write), nothing is touched."""
    torn = WHOLE[:cut_at("yaml")]
    (project / "dvc.lock").write_bytes(torn)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, zc.lockfile; "
                               "l = zc.lockfile.LockFile('.dvc/tmp/lock'); print('held', flush=True); time.sleep(60)"],
                              cwd=project, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main() == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another DVC process" in err[0]
    assert (project / "dvc.lock").read_bytes() == torn
    assert main() == 0 and "dvc.lock.torn" in capsys.readouterr().out
