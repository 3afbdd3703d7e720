"""The protocol's invariants: every arm gets the same study, trials train at the final budget."""

import pytest
from test_train import toy_data

from distillery.core.arms import ARMS, search_space, study_budget
from distillery.core.config import parse_params
from distillery.core.files import Best
from distillery.training.plan import final_run, trial_run
from distillery.tuning.studies import open_arm_study

PARAMS = parse_params({"data": {"image_size": 8}, "student": {"patch_size": 4, "embed_dim": 32, "depth": 1,
                                                             "num_heads": 2, "epochs": 5},
                      "sweep": {"prune_from_epoch": 3, "n_trials": 9}})
HP = {"lr": 2e-3, "weight_decay": 0.05, "mixing": 0.2, "drop_path": 0.05, "alpha": 0.5, "tau": 2.0}


def test_every_arm_gets_the_same_budget_and_shared_search():
    budgets = {arm: study_budget(PARAMS, arm) for arm in ARMS}
    assert all(b == budgets["none"] for b in budgets.values()), budgets
    shared = {k: v for k, v in search_space(PARAMS, "none").items()}
    assert set(shared) >= {"lr", "weight_decay", "mixing", "drop_path"}
    for arm in ARMS:
        space = search_space(PARAMS, arm)
        assert {k: space[k] for k in shared} == shared  # same knobs, same ranges
    assert set(search_space(PARAMS, "soft")) - set(shared) == {"alpha", "tau"}
    assert set(search_space(PARAMS, "hard")) - set(shared) == {"alpha"}
    assert set(search_space(PARAMS, "control")) == set(shared)


@pytest.mark.parametrize("profile", ["digits", "photos-small", "keras-flowers", "definitive"])
def test_no_profile_s_pruner_degenerates(profile):
    """Successive halving below rf² trials keeps a trial only if it beats every earlier one (trial 0 can
    never be pruned): every shipped profile's studies either prune with room to rank or not at all."""
    from pathlib import Path

    from distillery.profiles import profile_values

    p = parse_params(profile_values(Path(__file__).resolve().parents[1], profile, {"data": {"path": "photos"}}
                                    if profile == "photos-small" else None))
    pruner = study_budget(p, "soft")["pruner"]
    if pruner in ("successive_halving", "hyperband"):
        assert p.sweep.n_trials >= p.sweep.reduction_factor ** 2
    if pruner == "median":
        assert p.sweep.n_trials >= p.sweep.startup_trials + 3


@pytest.mark.parametrize("n_trials, rf, expect", [(3, 3, "none"), (8, 3, "none"), (9, 3, "successive_halving"),
                                                  (4, 2, "successive_halving"), (3, 2, "none")])
def test_successive_halving_is_switched_off_below_rf_squared_trials(n_trials, rf, expect):
    from distillery.core.config import SweepConfig

    assert SweepConfig(n_trials=n_trials, reduction_factor=rf).effective_pruner() == expect


def _study_settings(study):
    """What a study spends, read back from the Optuna objects the sweep stage builds."""
    pruner, sampler = study.pruner, study.sampler
    return (type(pruner).__name__, vars(pruner).get("_min_resource"), vars(pruner).get("_reduction_factor"),
            type(sampler).__name__, sampler._n_startup_trials, repr(sampler._rng.rng.get_state()[1][:4]))


def test_every_arm_s_study_is_built_identically(tmp_path):
    settings = {arm: _study_settings(open_arm_study(tmp_path / f"{arm}.db", arm, study_budget(PARAMS, arm)))
                for arm in ARMS}
    assert len(set(settings.values())) == 1, settings
    kind, min_resource, factor, _, startup, _ = settings["none"]
    assert (kind, min_resource, factor, startup) == ("SuccessiveHalvingPruner", 3, 3, PARAMS.sweep.startup_trials)
    # and the builder follows the budget: a different budget gives a different study
    other = study_budget(PARAMS, "none") | {"prune_from_epoch": 4, "startup_trials": 1}
    assert _study_settings(open_arm_study(tmp_path / "other.db", "o", other)) != settings["none"]


@pytest.mark.parametrize("arm", list(ARMS))
def test_a_trial_trains_exactly_the_final_schedule(arm):
    data = toy_data(size=8)
    trial = trial_run(PARAMS, arm, data, HP, number=3)
    best = Best(arm=arm, study_name="s", trial=3, objective=0.5, hparams=HP, n_trials=1, n_complete=1, n_pruned=0,
                epochs=PARAMS.student.epochs)
    final = final_run(PARAMS, arm, data, best, seed=PARAMS.seed)
    assert trial.recipe == final.recipe  # same epochs, warm-up, schedule, loss, seed
    assert trial.spec == final.spec
    assert trial.log_params(PARAMS).keys() == final.log_params(PARAMS).keys()
    assert trial.recipe.epochs == PARAMS.student.epochs


def test_only_distilled_arms_use_the_teacher():
    data = toy_data(size=8)
    uses = {arm: trial_run(PARAMS, arm, data, HP, 0).uses_teacher for arm in ARMS}
    assert uses == {"none": False, "control": False, "soft": True, "hard": True}
    assert trial_run(PARAMS, "control", data, HP, 0).spec.name == PARAMS.student.model  # two tokens
    assert trial_run(PARAMS, "none", data, HP, 0).spec.name == PARAMS.student.baseline_model


def test_final_seeds_vary_initialisation_and_data_order():
    data = toy_data(size=8)
    best = Best(arm="soft", study_name="s", trial=0, objective=0.5, hparams=HP, n_trials=1, n_complete=1, n_pruned=0,
                epochs=5)
    a, b = final_run(PARAMS, "soft", data, best, seed=1), final_run(PARAMS, "soft", data, best, seed=2)
    assert a.recipe.seed != b.recipe.seed  # data order and augmentation draw from the recipe seed
    assert a.seed != b.seed  # initialisation: spec.build(seed)
