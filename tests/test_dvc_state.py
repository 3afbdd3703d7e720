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


def cut_at(kind: str) -> bytes:
    """The prefix nearest the end that DVC refuses as `kind` (YAML or schema), ended by a newline so that the
    newline check does not answer first (a cut and then a newline: what a kill during a line's write and a
    later append would leave)."""
    for offset in range(len(WHOLE) - 1, 0, -1):
        cut = WHOLE[:offset] if WHOLE[offset - 1:offset] == b"\n" else WHOLE[:offset] + b"\n"
        Path("probe.lock").write_bytes(cut)
        if cut_kind(Path("probe.lock")) == kind:
            return cut
    raise AssertionError(kind)


def inside(marker: bytes, after: bytes, keep: int) -> bytes:
    """WHOLE cut `keep` bytes into the first `marker` after `after`: a kill inside DVC's rewrite of it."""
    return WHOLE[:WHOLE.index(marker, WHOLE.index(after)) + keep]


def test_dvc_judges_whole_empty_and_cut_locks(project):
    lock = project / "dvc.lock"
    assert lock_problem(lock) is None  # none at all: DVC starts afresh
    lock.write_bytes(WHOLE)
    assert lock_problem(lock) is None
    lock.write_bytes(b"")
    assert "validation failed" in lock_problem(lock)
    lock.write_bytes(cut_at("yaml"))
    assert "YAML file structure is corrupted" in lock_problem(lock)
    lock.write_bytes(cut_at("schema"))
    assert "validation failed" in lock_problem(lock)
    lock.write_bytes(WHOLE[:-1])
    assert "newline" in lock_problem(lock)


# DVC's loader and schema read both, and its repro fails on the first with an empty "failed to reproduce"
# (an unknown hash name, `hash: md`) and takes the second for a changed file: neither is a lock DVC can use.
USED_BUT_TORN = {
    "hash: md": inside(b"hash: md5", b"\n  evaluate:", len(b"hash: md")),
    "inside an md5": inside(b"md5: ", b"\n  evaluate:", len(b"md5: ") + 9),
    "hash: md, then a newline": inside(b"hash: md5", b"\n  evaluate:", len(b"hash: md")) + b"\n",
    "inside an md5, then a newline": inside(b"md5: ", b"\n  evaluate:", len(b"md5: ") + 9) + b"\n",
    "a directory without its file count": inside(b"nfiles: ", b"\n  evaluate:", 0),
}


@pytest.mark.parametrize("case", list(USED_BUT_TORN))
def test_a_lock_dvc_reads_but_cannot_use_is_repaired(project, case):
    (project / GOOD_COPY).parent.mkdir()
    (project / GOOD_COPY).write_bytes(WHOLE)
    torn = USED_BUT_TORN[case]
    (project / "dvc.lock").write_bytes(torn)
    assert cut_kind(project / "dvc.lock") == "torn"  # DVC's loader and schema alone would keep it
    done = repair(project, declared={})
    assert len(done) == 1 and "restored" in done[0], done
    assert (project / "dvc.lock").read_bytes() == WHOLE and (project / TORN).read_bytes() == torn


def test_a_last_entry_cut_at_a_lines_end_is_restored_when_there_is_a_copy(project):
    """Whole lines, every value whole, but the entry stops before the outs its stage declares."""
    cut = WHOLE[:WHOLE.index(b"    outs:", WHOLE.index(b"\n  evaluate:"))]
    declared = {"evaluate": (1, 1, True)}
    (project / "dvc.lock").write_bytes(cut)
    assert lock_problem(project / "dvc.lock") is None
    assert repair(project, declared) == [] and (project / "dvc.lock").read_bytes() == cut  # no copy: DVC reruns it
    (project / GOOD_COPY).parent.mkdir()
    (project / GOOD_COPY).write_bytes(WHOLE)
    done = repair(project, declared)
    assert len(done) == 1 and "stage evaluate" in done[0] and (project / "dvc.lock").read_bytes() == WHOLE


@pytest.mark.parametrize("kind", ["empty", "yaml", "schema"])
def test_a_refused_lock_is_kept_aside_and_the_good_copy_restored(project, kind):
    good = WHOLE.replace(b"schema: '2.0'", b"schema: '2.0'\n# the copy", 1)  # valid, and told apart from WHOLE
    (project / GOOD_COPY).parent.mkdir()
    (project / GOOD_COPY).write_bytes(good)
    torn = b"" if kind == "empty" else cut_at(kind)
    (project / "dvc.lock").write_bytes(torn)
    done = repair(project)
    assert len(done) == 1 and "dvc.lock.torn" in done[0] and "restored" in done[0]
    assert (project / "dvc.lock").read_bytes() == good and (project / TORN).read_bytes() == torn


def test_without_a_good_copy_a_refused_lock_is_moved_aside(project):
    (project / "dvc.lock").write_bytes(cut_at("yaml"))
    done = repair(project)
    assert len(done) == 1 and "reruns every stage" in done[0]
    assert not (project / "dvc.lock").exists() and (project / TORN).exists()


def test_a_lock_dvc_can_use_is_never_replaced_even_if_it_differs(project):
    """A hand-edited lock, or one cut between two entries: DVC reruns what it lacks; nothing is lost."""
    (project / GOOD_COPY).parent.mkdir()
    (project / GOOD_COPY).write_bytes(WHOLE)
    for valid in (WHOLE.replace(b"size: ", b"size: 1", 1), WHOLE[:WHOLE.index(b"\n  teacher:") + 1]):
        (project / "dvc.lock").write_bytes(valid)
        assert repair(project, declared={"prepare": (4, 2, True)}) == []
        assert (project / "dvc.lock").read_bytes() == valid and not (project / TORN).exists()


def test_a_stage_keeps_only_a_lock_dvc_reads(project):
    (project / "dvc.lock").write_bytes(WHOLE)
    keep_good_lock(project)
    assert (project / GOOD_COPY).read_bytes() == WHOLE
    for torn in (cut_at("yaml"), USED_BUT_TORN["hash: md, then a newline"]):
        (project / "dvc.lock").write_bytes(torn)
        keep_good_lock(project)  # a torn lock never replaces the good copy, even one DVC's loader reads
        assert (project / GOOD_COPY).read_bytes() == WHOLE


def test_an_unreadable_rwlock_is_removed_and_a_readable_one_kept(project):
    rwlock = project / ".dvc" / "tmp" / "rwlock"
    rwlock.write_text('{"read": {}, "write": {"x": {"pid": 1, "cmd": "dvc repro"}}}')
    assert repair(project) == []
    assert rwlock.exists()
    rwlock.write_text('{"read": {}, "wri')
    done = repair(project)
    assert len(done) == 1 and "rwlock" in done[0] and not rwlock.exists()


@pytest.mark.slow
def test_repair_waits_for_no_running_dvc_and_refuses_in_one_line(project, capsys):
    """While another process holds DVC's repository lock (a dvc repro may be mid-write), nothing is touched."""
    torn = cut_at("yaml")
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


def test_a_half_written_run_cache_entry_is_removed_and_finished_ones_kept(project):
    """DVC names a finished entry by its hash and writes it as `.<token>.tmp` first (dvc/stage/cache.py)."""
    folder = project / ".dvc" / "cache" / "runs" / "ab" / ("ab" + "0" * 62)
    folder.mkdir(parents=True)
    finished, torn = folder / ("c" * 64), folder / ".Zx81_kQ.tmp"
    finished.write_text("cmd: python x.py\n")
    torn.write_text("cmd: python x.py\ndeps:\n- path: data\n  hash: md")
    done = repair(project)
    assert len(done) == 1 and "1 half-written run-cache entry" in done[0], done
    assert finished.exists() and not torn.exists()
    assert repair(project) == []


@pytest.mark.slow
def test_declared_shapes_are_keyed_by_the_locks_stage_names_from_any_directory(tmp_path, monkeypatch):
    """The lock writes `final@none`; DVC's `addressing` would be `proj/dvc.yaml:final@none` from elsewhere."""
    from distillery.core.dvc_state import declared_shapes

    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "dvc.yaml").write_text(
        "stages:\n  final:\n    matrix:\n      arm: [none]\n    cmd: echo ${item.arm}\n    deps: [a.txt]\n"
        "    outs: [b.txt]\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path / "proj", check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path / "proj", check=True)
    monkeypatch.chdir(tmp_path)
    assert declared_shapes(tmp_path / "proj") == {"final@none": (1, 1, False)}
