"""What a hurried user does by hand: edits params.yaml as text, points keys at the wrong files, damages
outputs. Each case runs a real stage body in-process and must end with exit code 2 and one line that
names the key or the file, without a traceback. (test_config.py covers the values the schema refuses;
test_checkpoint_files.py the weight files.)"""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from distillery.core.cli import run_stage

ROOT = Path(__file__).resolve().parents[1]


def stage_module(name):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "pipeline" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A project folder with the default params and digits prepared once."""
    home = tmp_path_factory.mktemp("bad") / "proj"
    home.mkdir()
    shutil.copy(ROOT / "params.yaml", home / "params.yaml")
    (home / "dvc.yaml").write_text("stages: {}\n")
    import os

    cwd = os.getcwd()
    os.chdir(home)
    try:
        assert run_stage("prepare", stage_module("prepare").body, argv=[]) == 0
    finally:
        os.chdir(cwd)
    return home


def params_text(edit):
    return edit((ROOT / "params.yaml").read_text())


def replace(old, new):
    def edit(text):
        assert old in text, old
        return text.replace(old, new, 1)
    return edit


# (case, stage, params edit, file damage, what the one line must name)
CASES = [
    ("a tab where YAML wants spaces", "prepare", replace("  batch_size: 32", "\tbatch_size: 32"), None,
     "not valid YAML"),
    ("a section written as a value", "prepare", replace("final:  ", "final: 3\nfinal_old:  "), None, "final"),
    ("seeds written as a string", "prepare", replace("seeds: [1, 2, 3, 4] ", 'seeds: "1,2,3,4" '), None,
     "final.seeds"),
    ("epochs written as a word", "prepare", replace("  epochs: 30 ", "  epochs: thirty "), None, "student.epochs"),
    ("a key in the wrong section", "prepare", replace("  batch_size: 32", "  batch_size: 32\n  epochs: 3"), None,
     "train.epochs"),
    ("an arm that does not exist", "prepare", replace("with_teacher: [soft, hard]", "with_teacher: [soft, medium]"),
     None, "arms.with_teacher"),
    ("a folder source without a path", "prepare", replace("source: digits", "source: folder"), None, "data.path"),
    ("a key written twice", "prepare", replace("source: digits", "source: folder\n  path: my_fotos"), None,
     "key 'path' appears twice"),
    ("data.path at a file", "prepare", lambda t: replace("path: null", "path: params.yaml")(
        replace("source: digits", "source: folder")(t)), None, "params.yaml"),
    ("data.path that does not exist", "prepare", lambda t: replace("path: null", "path: my_fotos")(
        replace("source: digits", "source: folder")(t)), None, "my_fotos"),
    ("teacher.pretrained at the params file", "teacher", replace("pretrained: false", "pretrained: params.yaml"),
     None, "params.yaml"),
    ("teacher.pretrained at a prepared array", "teacher",
     replace("pretrained: false", "pretrained: data/prepared/train_x.npy"), None, "train_x.npy"),
    ("a truncated prepared array", "teacher", None, ("data/prepared/train_x.npy", b"\x93NUMPY\x01\x00"),
     "train_x.npy"),
    ("a hand-edited meta.json", "teacher", None, ("data/prepared/meta.json", b'{"classes": ['), "meta.json"),
    ("a best.json cut short", "final", None, ("sweeps/none/best.json", b'{"arm": "none", '), "best.json"),
    ("a best.json from another arm", "final", None, ("sweeps/none/best.json", None), "best.json"),
    ("a teacher model that is a text file", "sweep_kd", None, ("models/teacher.pt", b"not a model\n"), "teacher.pt"),
    # Keys no stage lists: under DVC only the report stage (it tracks the whole file) reruns, and refuses them.
    ("a key that does not exist", "report", lambda t: t + "definitely_not_a_key: 1\n", None,
     "unknown key 'definitely_not_a_key'"),
    ("a misspelt top-level key", "report", replace("seed: 0 ", "sead: 0 "), None, "did you mean 'seed'?"),
    ("a misspelt key in a section no stage lists", "report", replace("  experiment: distillery", "  experimnt: x"),
     None, "did you mean 'tracking.experiment'?"),
    ("a key in the wrong section that no stage reads", "report", replace("  experiment: distillery",
     "  experiment: distillery\n  dpi: 80"), None, "unknown key 'tracking.dpi'"),
    ("a key with a trailing space", "report", replace("seed: 0 ", '"seed ": 0 '), None,
     "unknown key 'seed ', which holds a blank"),
    ("a key with a pasted no-break space", "report", replace("seed: 0 ", "seed\u00a0: 0 "), None,
     "'seed\\xa0', which holds a blank or an invisible character (did you mean 'seed'?)"),
    ("a list where the sections belong", "report", lambda t: "- seed: 0\n- data: {}\n", None,
     "must be a mapping of sections"),
    ("a file of comments only", "report", lambda t: "".join(l for l in t.splitlines(True) if l.startswith("#")),
     None, "is empty or only comments"),
    ("an empty file", "report", lambda t: "", None, "params.yaml is empty"),
    ("a section that is a list", "report", replace("report:\n", "report:\n  - dpi: 80\nreport_old:\n"), None,
     "report="),
]


@pytest.mark.parametrize("case, stage, edit, damage, expected", CASES, ids=[c[0] for c in CASES])
def test_a_hurried_users_mistake_ends_in_one_line(prepared, tmp_path, monkeypatch, capsys, case, stage, edit,
                                                  damage, expected):
    home = tmp_path / "proj"
    shutil.copytree(prepared, home)
    monkeypatch.chdir(home)
    if edit is not None:
        (home / "params.yaml").write_text(params_text(edit))
    if damage is not None:
        rel, content = damage
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        if content is None:  # a valid best.json, but of another arm's study
            content = json.dumps({"arm": "control", "study_name": "x", "trial": 0, "objective": 0.5, "n_trials": 1,
                                  "n_complete": 1, "n_pruned": 0, "epochs": 30,
                                  "hparams": {"lr": 1e-3, "weight_decay": 0.05, "mixing": 0.0,
                                              "drop_path": 0.0}}).encode()
        (home / rel).write_bytes(content)
    module, argv = {"prepare": ("prepare", []), "teacher": ("teacher", []), "final": ("final", ["--arm", "none"]),
                    "sweep_kd": ("sweep", ["--arm", "soft"]), "report": ("report", [])}[stage]
    loaded = stage_module(module)
    rc = run_stage(module, loaded.body, getattr(loaded, "add_args", None), argv=argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (case, err)
    assert "Traceback" not in err and len(lines) == 1, (case, err)
    assert expected in lines[0] and lines[0].startswith(f"distillery {module}: error:"), (case, lines[0])


def test_a_params_file_that_is_not_there_or_not_yaml(tmp_path, capsys):
    rc = run_stage("prepare", lambda ctx: "x", argv=["--params", str(tmp_path / "parms.yaml")])
    assert rc == 2 and "parms.yaml" in capsys.readouterr().err
    binary = tmp_path / "model.pt"
    binary.write_bytes(np.arange(256, dtype=np.uint8).tobytes())
    rc = run_stage("prepare", lambda ctx: "x", argv=["--params", str(binary)])
    err = capsys.readouterr().err
    assert rc == 2 and "model.pt" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="make repro runs the project's .venv")
def test_make_repro_on_an_empty_params_file_says_so_in_one_line_before_dvc(tmp_path):
    """DVC alone fails on dvc.yaml's matrix ("Could not find 'arms.without_teacher'"), naming no file to fix."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)  # older than the venv's stamp: make installs nothing
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "params.yaml").write_text("")
    out = subprocess.run(["make", "repro"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    ours = [line for line in out.stderr.splitlines() if line.startswith("distillery")]
    assert out.returncode != 0 and "Traceback" not in out.stderr and "failed to parse" not in out.stderr, out.stderr
    assert ours == [ours[0]] and "params.yaml is empty" in ours[0] and "make profile NAME=digits" in ours[0], ours
