"""Profiles: each validates, applying one keeps params.yaml's comments, and each runs end to end shrunk."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, copy_project, project_env, run_ok

from distillery.core.config import Params, load_params
from distillery.core.errors import ConfigError
from distillery.profiles import apply_profile, available, parse_overrides, profile_values

PROFILES = ("digits", "keras-flowers", "photos-small", "definitive", "patient", "ablations")


def test_the_shipped_profiles_are_listed():
    assert set(PROFILES) <= set(available(ROOT))


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_is_valid_params(name):
    tree = profile_values(ROOT, name, {"data": {"path": "/somewhere"}} if name == "photos-small" else None)
    assert Params.model_validate(tree)


def test_keras_flowers_is_the_seeds_recipe():
    p = Params.model_validate(profile_values(ROOT, "keras-flowers"))
    assert (p.data.source, p.data.image_size, p.train.batch_size, p.student.epochs) == ("tf_flowers", 224, 256, 20)
    assert (p.student.patch_size, p.student.embed_dim, p.student.depth, p.student.num_heads) == (16, 192, 12, 3)
    assert p.search.lr.low == p.search.lr.high == pytest.approx(5e-4 * 256 / 512)
    assert p.search.weight_decay.low == p.search.weight_decay.high == 1e-4
    assert p.search.drop_path.low == p.search.drop_path.high == 0.1 and p.search.mixing.choices == [0.0]
    assert p.train.label_smoothing == 0.1 and p.teacher.pretrained is True and "resnet" in p.teacher.model


def test_photos_small_needs_a_folder():
    with pytest.raises(ConfigError, match="data.path is required"):
        profile_values(ROOT, "photos-small")


def test_applying_a_profile_rewrites_values_and_keeps_comments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    p = apply_profile(params, ROOT, "photos-small", parse_overrides(["data.path=/my/photos", "student.depth=3"]))
    text = params.read_text()
    assert p.data.image_size == 64 and p.augment.random_resized_crop and p.student.depth == 3
    assert "# the size models see" in text and "rrc_scale: [0.25, 1.0]" in text
    assert load_params(params) == p
    back = apply_profile(params, ROOT, "digits")  # switching profiles leaves nothing of the last one
    assert back == Params() == load_params(params)


@pytest.mark.slow
def test_a_bad_profile_or_override_is_one_line_and_leaves_params_alone(tmp_path):
    params = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    params.write_text(original)
    for args in (["nope"], ["photos-small", "data.path=/x", "student.depthh=3"], ["digits", "student.depth"]):
        proc = subprocess.run([sys.executable, "-m", "distillery.profiles", *args], cwd=tmp_path,
                              capture_output=True, text=True, env={**project_env(), "DVC_ROOT": ""})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert params.read_text() == original


# ---------------------------------------------------------------- end to end, shrunk
TINY = {"data.image_size": 32, "data.storage_size": 36, "student.depth": 2, "student.epochs": 2,
        "teacher.epochs": 2, "train.batch_size": 16, "sweep.n_trials": 2, "sweep.cold_trials": 1, "sweep.startup_trials": 1,
        "sweep.prune_from_epoch": 2, "sweep.objective_epochs": 1, "final.seeds": [1, 2],
        "final.max_seeds": 2, "evaluate.throughput_repeats": 1}


def shrunk_repro(tmp_path, name, overrides):
    """Apply the profile (plus the shrinking overrides) in a copy of the project and run `dvc repro`."""
    from distillery.synthetic import make_photo_folder

    photos = make_photo_folder(tmp_path / "photos", per_class=10, classes=3, seed=5)
    dest = copy_project(tmp_path / "repo", {})
    env = project_env()
    sets = [f"{k}={json.dumps(v)}" for k, v in {**TINY, "data.source": "folder", "data.path": str(photos),
                                                 **overrides}.items()]
    run_ok([sys.executable, "-m", "distillery.profiles", name, *sets], dest, env)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        run_ok(cmd, dest, env)
    return dest, run_ok(["dvc", "repro"], dest, env)


@pytest.mark.slow
def test_keras_flowers_shrunk_runs_end_to_end_fine_tuning_a_resnet_from_a_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet18_imagenet_like.safetensors"  # stands in for timm's hub weights (no internet)
    save_file(timm.create_model("resnet18", num_classes=1000).state_dict(), str(weights))
    dest, log = shrunk_repro(tmp_path, "keras-flowers", {
        "teacher.model": "resnet18", "teacher.pretrained": str(weights), "augment.translate": 2,
        "arms.without_teacher": ["none"], "arms.with_teacher": ["soft"], "report.primary": "soft-none"})
    params = yaml.safe_load((dest / "params.yaml").read_text())
    assert params["student"]["embed_dim"] == 192 and params["student"]["patch_size"] == 16  # the profile's
    assert "1000 classes" in log and "re-initialised" in log  # ImageNet head replaced by a 3-class one
    data = json.loads((dest / "metrics/data.json").read_text())
    assert data["image_size"] == 32 and data["storage_size"] == 36 and data["channels"] == 3
    ev = json.loads((dest / "metrics/evaluation.json").read_text())
    assert set(ev) == {"teacher", "none", "soft"} and ev["soft"]["n_seeds"] == 2
    report = (dest / "reports/report.md").read_text()
    assert "soft" in report and ("Weak teacher" in report or "Teacher check passed" in report)


@pytest.mark.slow
def test_photos_small_shrunk_runs_end_to_end_streaming_random_resized_crops(tmp_path):
    dest, log = shrunk_repro(tmp_path, "photos-small", {
        "teacher.pretrained": False, "train.device_cache": "off",
        "arms.without_teacher": ["control"], "arms.with_teacher": ["hard"], "sweep.recipe_arm": "control",
        "report.primary": "hard-control"})
    params = yaml.safe_load((dest / "params.yaml").read_text())
    assert params["augment"]["random_resized_crop"] is True and params["student"]["patch_size"] == 8
    assert "streaming training batches from the prepared memory map (train.device_cache: off)" in log
    ev = json.loads((dest / "metrics/evaluation.json").read_text())
    assert set(ev) == {"teacher", "control", "hard"}
    effects = json.loads((dest / "reports/effects.json").read_text())
    assert set(effects["comparisons"]) == {"hard-control"} and "teacher_check" in effects
