"""Sweep trials on toy data: a diverging trial is pruned with its reason and the sweep goes on."""

import mlflow
import pytest
from test_train import RecordingTeacher, toy_data

from distillery.core.config import TrackingConfig, parse_params
from distillery.core.paths import Layout
from distillery.tuning.studies import open_study, run_study
from distillery.core.tracking import setup_tracking
from distillery.tuning.objective import ArmObjective

SMALL_STUDENT = {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture()
def tracking(tmp_path):
    setup_tracking(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t"), Layout(tmp_path))
    yield
    mlflow.set_tracking_uri(None)


def params_with(lr_range):
    return parse_params({"data": {"image_size": 8}, "student": {**SMALL_STUDENT, "epochs": 1},
                         "train": {"batch_size": 16},
                         "sweep": {"n_trials": 2, "cold_trials": 1, "pruner": "none", "objective_epochs": 1, "recipe": "per_arm"},
                         "search": {"lr": lr_range},
                         "distill": {"hard": {"alpha": {"low": 0.5, "high": 0.5}}}})


@pytest.mark.slow
def test_diverging_trials_are_pruned_with_the_reason(tmp_path, tracking):
    params = params_with({"low": 1e30, "high": 1e30})
    study = open_study(tmp_path / "s.db", "nan", params.sweep, 0, 0, 1)
    result = run_study(study, ArmObjective(params, "hard", toy_data(), RecordingTeacher(), {}), 2)
    assert [t["state"] for t in result.trials] == ["PRUNED", "PRUNED"]
    assert all("loss became nan" in t["prune_reason"] for t in result.trials)
    assert result.best == {}
    runs = mlflow.search_runs(experiment_names=["t"])
    assert set(runs["tags.trial_state"]) == {"PRUNED"} and runs["tags.prune_reason"].str.contains("nan").all()


@pytest.mark.slow
def test_healthy_trials_complete_and_log_their_curves(tmp_path, tracking):
    params = params_with({"low": 1e-3, "high": 1e-3})
    study = open_study(tmp_path / "s.db", "ok", params.sweep, 0, 0, 1)
    result = run_study(study, ArmObjective(params, "hard", toy_data(), RecordingTeacher(), {}), 2)
    assert [t["state"] for t in result.trials] == ["COMPLETE", "COMPLETE"]
    assert result.best["hparams"]["alpha"] == 0.5 and result.best["hparams"]["lr"] == 1e-3
    runs = mlflow.search_runs(experiment_names=["t"])
    assert len(runs) == 2 and runs["metrics.val_acc"].notna().all()
