"""Optuna studies: the trial cap holds across reruns, a rerun resumes the stored study."""

import optuna
import pytest

from distillery.config import SoftLossConfig, SweepConfig
from distillery.sweep import FINISHED, open_study, run_study, study_name, suggest_loss_params


def objective(trial):
    hp = suggest_loss_params(trial, SoftLossConfig())
    for step in range(3):
        trial.report(hp["alpha"] * (step + 1), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return hp["alpha"] - 0.01 * hp["tau"]


def test_cap_holds_across_reruns_and_the_study_resumes(tmp_path):
    cfg = SweepConfig(n_trials=4, epochs=3, startup_trials=2)
    study = open_study(tmp_path / "study.db", "s", cfg, seed=0)
    first = run_study(study, objective, cfg.n_trials)
    assert len(first.trials) == 4
    # a rerun (new process: reopen from disk) adds nothing once the cap is reached
    again = run_study(open_study(tmp_path / "study.db", "s", cfg, seed=0), objective, cfg.n_trials)
    assert [t["number"] for t in again.trials] == [0, 1, 2, 3]
    # raising the cap continues the same study: old trials kept, numbering goes on
    more = run_study(open_study(tmp_path / "study.db", "s", cfg, seed=0), objective, 6)
    assert [t["number"] for t in more.trials] == list(range(6))
    assert more.best["val_acc"] >= first.best["val_acc"]


def test_interrupted_study_keeps_finished_trials(tmp_path):
    cfg = SweepConfig(n_trials=5, epochs=3)
    study = open_study(tmp_path / "study.db", "s", cfg, seed=0)
    calls = {"n": 0}

    def dies_on_third(trial):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return objective(trial)

    with pytest.raises(KeyboardInterrupt):
        run_study(study, dies_on_third, cfg.n_trials)
    reopened = open_study(tmp_path / "study.db", "s", cfg, seed=0)
    assert len(reopened.get_trials(states=FINISHED)) == 2
    result = run_study(reopened, objective, cfg.n_trials)
    assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in result.trials) == 5


def test_best_records_fixed_parameters(tmp_path):
    space = SoftLossConfig(alpha={"low": 0.5, "high": 0.5}, tau={"low": 2.0, "high": 2.0})
    study = open_study(tmp_path / "study.db", "fixed", SweepConfig(n_trials=1), seed=0)

    def obj(trial):
        hp = suggest_loss_params(trial, space)
        for k, v in hp.items():
            trial.set_user_attr(k, v)
        return 0.5

    result = run_study(study, obj, 1)
    assert result.best["alpha"] == 0.5 and result.best["tau"] == 2.0


def test_study_name_changes_with_what_makes_trials_comparable():
    assert study_name("soft", {"epochs": 3}) == study_name("soft", {"epochs": 3})
    assert study_name("soft", {"epochs": 3}) != study_name("soft", {"epochs": 4})
    assert study_name("soft", {"epochs": 3}) != study_name("hard", {"epochs": 3})
