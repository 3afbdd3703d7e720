"""Warm-starting a study from committed trials (tuning/warm_start.py): what enters the study, and when not."""

import json

import optuna
import pytest

from distillery.core.config import ChoiceSpec, RangeSpec
from distillery.core.errors import ConfigError
from distillery.tuning.studies import summarize_study, suggest_space
from distillery.tuning.warm_start import conditions_mismatch, warm_file, warm_start

SPACE = {"lr": RangeSpec(low=1e-3, high=4e-3, log=True), "mixing": ChoiceSpec(choices=[0.0, 0.2, 0.8])}
CSV = """number,state,value,epochs_run,lr,mixing,last_val_acc,prune_reason
0,COMPLETE,0.93,30,0.00214,0,0.933,
1,PRUNED,,12,0.00178,0.2,0.61,rung 0
2,COMPLETE,0.956,30,0.00183,0,0.955,
3,COMPLETE,0.99,30,0.009,0.8,0.99,
"""


def _study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=0))


def _files(tmp_path, here=None):
    folder = tmp_path / "warm_start"
    folder.mkdir()
    (folder / "none.csv").write_text(CSV)
    (folder / "none.json").write_text(json.dumps(here or {"epochs": 30}))
    return folder / "none.csv"


def test_committed_trials_enter_the_study_with_their_values_and_the_best_stays_theirs(tmp_path):
    study = _study()
    n, line = warm_start(study, _files(tmp_path), SPACE, 30, None, {"epochs": 30})
    assert n == 3 and "1 outside the search space left out" in line  # lr 0.009 is above the range
    summary = summarize_study(study)
    assert summary.best["trial"] == 2 and summary.best["objective"] == pytest.approx(0.956)
    assert summary.best["hparams"] == {"lr": pytest.approx(0.00183), "mixing": 0.0}
    assert [t["epochs_run"] for t in summary.trials] == [30, 12, 30]  # the pruned one ran 12 epochs
    assert all(t["warm_start"] for t in summary.trials)
    trial = study.ask()  # TPE draws the next trial from the committed history, in the same distributions
    hp = suggest_space(trial, SPACE)
    assert 1e-3 <= hp["lr"] <= 4e-3 and hp["mixing"] in (0.0, 0.2, 0.8)
    again, line = warm_start(study, tmp_path / "warm_start" / "none.csv", SPACE, 30, None, {"epochs": 30})
    assert again == 3 and "resumed" in line  # a resumed study is not warm-started twice


def test_trials_from_other_conditions_or_another_recipe_start_the_study_cold(tmp_path):
    path = _files(tmp_path)
    n, line = warm_start(_study(), path, SPACE, 3, None, {"epochs": 3})
    assert n == 0 and "cold start" in line and "other epochs" in line
    assert conditions_mismatch(path, {"epochs": 30}) is None
    recipe = {"lr": 0.002}  # a distilled arm's trials ran at lr 0.00214 / 0.00178 / ..., not at this recipe
    n, line = warm_start(_study(), path, {"mixing": SPACE["mixing"]}, 30, recipe, {"epochs": 30})
    assert n == 0 and "its trials ran at lr=0.00214, the shared recipe here has lr=0.002" in line


def test_the_warm_start_folder_is_checked_and_an_arm_without_trials_starts_cold(tmp_path):
    assert warm_file(tmp_path, None, "none") is None
    with pytest.raises(ConfigError, match="sweep.warm_start=nowhere: folder .* not found"):
        warm_file(tmp_path, "nowhere", "none")
    _files(tmp_path)
    assert warm_file(tmp_path, "warm_start", "none").name == "none.csv"
    assert warm_file(tmp_path, "warm_start", "fake") is None
    (tmp_path / "warm_start" / "none.csv").write_text("number,state\n0,COMPLETE\n")
    with pytest.raises(ConfigError, match="lacks column"):
        warm_start(_study(), tmp_path / "warm_start" / "none.csv", SPACE, 30, None, {"epochs": 30})
