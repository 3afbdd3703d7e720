"""params.yaml validation: the shipped file equals the defaults; bad values name the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import set_dotted

from distillery.core.config import Params, load_params, parse_params
from distillery.recipe.models import check_model_names
from distillery.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_equal_schema_defaults():
    assert load_params(ROOT / "params.yaml") == Params()


def test_empty_params_give_defaults():
    assert parse_params({}) == Params()


def with_value(dotted, value):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    set_dotted(raw, dotted, value)
    return raw


BAD_VALUES = [
    ("data.sorce", "digits", "did you mean 'data.source'"),
    ("sead", 1, "did you mean 'seed'"),
    ("data.source", "imagenet", "data.source='imagenet'"),
    ("data.image_size", "big", "data.image_size='big'"),
    ("data.val_fraction", 0.85, "leaves no training data"),
    ("data.test_fraction", 1.2, "data.test_fraction=1.2"),
    ("train.batch_size", 0, "train.batch_size=0"),
    ("teacher.epochs", 0, "teacher.epochs=0"),
    ("student.epochs", -3, "student.epochs=-3"),
    ("train.batch_size", 31, "is odd, and Mixup/CutMix"),
    ("search.mixing", {"choices": [-1.0]}, "negative alpha"),
    ("search.lr", {"low": 0.0, "high": 1e-3}, "lr > 0"),
    ("search.drop_path", {"low": 0.0, "high": 1.5}, "leaves [0, 0.99]"),
    ("arms.with_teacher", ["none"], "arms.with_teacher.0='none'"),
    ("arms.without_teacher", [], "a distilled arm needs 'none' or 'control'"),
    ("sweep.objective_epochs", 99, "exceeds student.epochs"),
    ("report.min_effect", -1, "report.min_effect=-1"),
    ("distill.soft.alpha", {"low": 0.2, "high": 1.5}, "leaves [0, 1]"),
    ("distill.hard.alpha", {"low": 0.8, "high": 0.2}, "low=0.8 > high=0.2"),
    ("distill.soft.tau", {"low": 0.0, "high": 4.0}, "tau > 0"),
    ("distill.soft.kl_reduction", "mean", "distill.soft.kl_reduction='mean'"),
    ("student.patch_size", 3, "not divisible by student.patch_size=3"),
    ("student.model", "deit_tiny_patch16_224", "not a distilled variant"),
    ("student.baseline_model", "deit_tiny_distilled_patch16_224", "has a distillation token"),
    ("student.num_heads", 5, "not divisible by student.num_heads=5"),
    ("data.storage_size", 8, "data.storage_size=8 is below data.image_size=16"),
    ("augment.rrc_scale", [0.5, 0.2], "is not an area range"),
    ("augment.rrc_scale", [0.0, 1.0], "is not an area range"),
    ("augment.rrc_ratio", [1.5, 0.5], "is not an aspect-ratio range"),
    ("augment.random_resized_crop", True, "random_resized_crop is on and augment.translate=2"),
    ("train.device_cache", "maybe", "train.device_cache='maybe'"),
    ("report.weak_teacher_ratio", 1.5, "report.weak_teacher_ratio=1.5"),
    ("sweep.storage", "optuna.db", "is not a database URL"),
    ("sweep.workers", 0, "sweep.workers=0"),
    ("sweep.heartbeat_interval", 0, "sweep.heartbeat_interval=0"),
    ("sweep.pruner", "random", "sweep.pruner='random'"),
    ("sweep.n_trials", 0, "sweep.n_trials=0"),
    ("data.source", "folder", "data.path is required"),
    ("final.seeds", [1, 1], "repeats a seed"),
    ("final.seeds", [0, 1], "would repeat the winning trial"),
    ("sweep.prune_from_epoch", 99, "after the last epoch"),
    ("augment.randaugment", "m9", "not a timm RandAugment spec"),
]


@pytest.mark.parametrize("dotted, value, expected", BAD_VALUES)
def test_bad_values_name_the_key(dotted, value, expected):
    with pytest.raises(ConfigError) as info:
        parse_params(with_value(dotted, value))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_timm_model_is_refused_with_a_suggestion():
    params = parse_params(with_value("teacher.model", "resnet1"))
    with pytest.raises(ConfigError, match="teacher.model='resnet1' is not a timm model"):
        check_model_names(params)


@pytest.mark.slow
def test_stage_reports_bad_params_in_one_line_without_traceback(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_value("train.batch_size", 0)))
    proc = subprocess.run([sys.executable, str(ROOT / "pipeline" / "prepare.py"), "--params", str(bad)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.batch_size=0" in lines[0]


@pytest.mark.parametrize("dotted, value, expected", BAD_VALUES)
def test_every_bad_value_ends_a_stage_with_one_line(tmp_path, capsys, dotted, value, expected):
    from distillery.core.cli import run_stage

    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_value(dotted, value)))
    rc = run_stage("prepare", lambda ctx: "not reached", argv=["--params", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and expected in err and err.startswith("distillery prepare: error:")


def test_unknown_model_ends_a_stage_with_one_line(tmp_path, capsys):
    from distillery.core.cli import run_stage

    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_value("student.baseline_model", "vit_tiny_patch99")))
    rc = run_stage("teacher", lambda ctx: check_model_names(ctx.params), argv=["--params", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "student.baseline_model='vit_tiny_patch99'" in err


def test_unknown_loss_type_is_refused(capsys):
    from distillery.core.cli import run_stage

    def add_args(parser):
        parser.add_argument("--loss", required=True, choices=["soft", "hard"])

    with pytest.raises(SystemExit) as info:
        run_stage("sweep", lambda ctx: "not reached", add_args, argv=["--loss", "medium"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "invalid choice: 'medium'" in err and len(err.strip().splitlines()) == 1


def test_debug_switch_shows_the_traceback(tmp_path, capsys):
    from distillery.core.cli import run_stage

    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_value("train.batch_size", 0)))
    assert run_stage("prepare", lambda ctx: "x", argv=["--params", str(bad), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_no_arm_at_all_is_refused():
    with pytest.raises(ConfigError, match="both empty"):
        parse_params({"arms": {"without_teacher": [], "with_teacher": []}})


def test_a_bare_on_or_off_means_what_it_says():
    """PyYAML reads `device_cache: off` as False (YAML 1.1); DVC's parser reads the string 'off'."""
    assert parse_params(yaml.safe_load("train: {device_cache: off}")).train.device_cache == "off"
    assert parse_params(yaml.safe_load("train: {device_cache: on}")).train.device_cache == "on"
    assert parse_params({"train": {"device_cache": "auto"}}).train.device_cache == "auto"
