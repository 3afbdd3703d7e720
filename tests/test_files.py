"""Atomic writes: a write that does not finish leaves the previous file, never a truncated one."""

import pytest

from distillery.core.files import atomic_path, read_json, write_csv, write_json


def test_a_finished_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert read_json(path) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_a_write_that_fails_midway_leaves_the_previous_file(tmp_path):
    path = tmp_path / "h.csv"
    write_csv(path, [{"epoch": 1, "val_acc": 0.5}])
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("epoch,val_acc\n1,")  # half a file, then the process "dies"
            raise RuntimeError("killed")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["h.csv"]


def test_the_temporary_is_hidden_and_names_the_writer(tmp_path):
    import os

    with atomic_path(tmp_path / "model.pt") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.pt.") and str(os.getpid()) in tmp.name
        tmp.write_bytes(b"x")
    assert (tmp_path / "model.pt").read_bytes() == b"x"


def test_planned_extra_seeds_before_and_after_the_plan(tmp_path):
    from distillery.core.files import planned_extra_seeds

    plan = tmp_path / "seed_plan.json"
    assert planned_extra_seeds(plan, ["none", "soft"]) == {"none": [], "soft": []}
    plan.write_text('{"arms": {"none": {"seeds": 5, "extra_seeds": [4, 5]}}}')
    assert planned_extra_seeds(plan, ["none", "soft"]) == {"none": [4, 5], "soft": []}
