"""The protocol's invariants: every arm gets the same study, trials train at the final budget."""

import pytest
from test_train import toy_data

from distillery.core.arms import ARMS, load_best
from distillery.core.search_spaces import has_study, is_fixed, search_space, study_budget
from distillery.core.config import parse_params
from distillery.reporting.seed_plan import comparison_pairs
from distillery.core.files import Best
from distillery.recipe.arm_runs import final_run, trial_run
from distillery.tuning.studies import open_arm_study

PARAMS = parse_params({"data": {"image_size": 8}, "student": {"patch_size": 4, "embed_dim": 32, "depth": 1,
                                                             "num_heads": 2, "epochs": 5},
                      "sweep": {"prune_from_epoch": 3, "n_trials": 9}})
HP = {"lr": 2e-3, "weight_decay": 0.05, "mixing": 0.2, "drop_path": 0.05, "alpha": 0.5, "tau": 2.0}


PER_ARM = PARAMS.model_copy(update={"sweep": PARAMS.sweep.model_copy(update={"recipe": "per_arm"})})


def test_best_vs_best_every_arm_gets_the_same_budget_and_shared_search():
    budgets = {arm: study_budget(PER_ARM, arm) for arm in ARMS}
    assert all(b == budgets["none"] for b in budgets.values()), budgets
    shared = {k: v for k, v in search_space(PER_ARM, "none").items()}
    assert set(shared) >= {"lr", "weight_decay", "mixing", "drop_path"}
    for arm in ARMS:
        space = search_space(PER_ARM, arm)
        assert {k: space[k] for k in shared} == shared  # same knobs, same ranges
        assert has_study(PER_ARM, arm)
    assert set(search_space(PER_ARM, "soft")) - set(shared) == {"alpha", "tau"}
    assert set(search_space(PER_ARM, "hard")) - set(shared) == {"alpha"}
    assert set(search_space(PER_ARM, "control")) == set(shared)


def test_same_recipe_the_other_arms_search_only_their_own_knobs_at_the_recipe_arm_s_winner():
    budgets = {arm: study_budget(PARAMS, arm) for arm in ARMS}
    assert all(b == budgets["none"] for b in budgets.values()), budgets
    assert PARAMS.sweep.recipe == "shared" and PARAMS.sweep.recipe_arm == "none"  # the default
    recipe = {k: HP[k] for k in ("lr", "weight_decay", "mixing", "drop_path")}
    assert not any(is_fixed(v) for v in search_space(PARAMS, "none").values())
    with pytest.raises(ValueError, match="shared recipe"):
        search_space(PARAMS, "soft")
    soft = search_space(PARAMS, "soft", recipe)
    searched = {k for k, v in soft.items() if not is_fixed(v)}
    assert searched == {"alpha", "tau"}
    assert {k: soft[k].choices[0] if k == "mixing" else soft[k].low for k in recipe} == recipe
    assert {k for k, v in search_space(PARAMS, "hard", recipe).items() if not is_fixed(v)} == {"alpha"}
    assert {has_study(PARAMS, a) for a in ("none", "soft", "hard", "fake")} == {True} and not has_study(PARAMS, "control")


def _best(arm, hparams, **kw):
    return Best(arm=arm, study_name=arm, trial=0, objective=0.5, hparams=hparams, n_trials=1, n_complete=1,
                n_pruned=0, epochs=5, **kw)


def test_load_best_completes_a_shared_recipe_arm_and_refuses_one_tuned_at_another_recipe(tmp_path):
    from distillery.core.errors import ConfigError
    from distillery.core.paths import Layout

    layout = Layout(tmp_path)
    recipe = {k: HP[k] for k in ("lr", "weight_decay", "mixing", "drop_path")}
    _best("none", recipe).save(layout.best("none"))
    Best(arm="control", study_name="c", trial=None, objective=None, hparams={}, n_trials=0, n_complete=0, n_pruned=0,
         epochs=5, recipe_from="none").save(layout.best("control"))
    _best("soft", {**recipe, "alpha": 0.3, "tau": 2.0}, recipe_from="none").save(layout.best("soft"))
    assert load_best(layout, PARAMS, "control").hparams == recipe
    assert load_best(layout, PARAMS, "soft").hparams == {**recipe, "alpha": 0.3, "tau": 2.0}
    assert load_best(layout, PARAMS, "none").hparams == recipe
    _best("hard", {**recipe, "lr": 9e-3, "alpha": 0.3}, recipe_from="none").save(layout.best("hard"))
    with pytest.raises(ConfigError, match=r"sweeps/hard/best.json was not tuned at the shared recipe.*sweep_kd@hard"):
        load_best(layout, PARAMS, "hard")  # the recipe arm's sweep changed after hard's
    _best("hard", {**recipe, "alpha": 0.3}).save(layout.best("hard"))  # a best-vs-best study's winner
    with pytest.raises(ConfigError, match="not tuned at the shared recipe"):
        load_best(layout, PARAMS, "hard")
    assert load_best(layout, PER_ARM, "hard").hparams == {**recipe, "alpha": 0.3}


def test_the_recipe_arm_must_be_one_that_runs():
    from distillery.core.config import parse_params as parse
    from distillery.core.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="sweep.recipe_arm=none is not in arms.without_teacher"):
        parse({"arms": {"without_teacher": ["control"], "with_teacher": ["hard"]}, "report": {"primary": None}})
    assert parse({"arms": {"without_teacher": ["control"], "with_teacher": ["hard"]}, "report": {"primary": None},
                  "sweep": {"recipe_arm": "control"}}).sweep.recipe_arm == "control"


def test_the_primary_comparison_must_be_one_the_arms_make():
    from distillery.core.config import parse_params as parse
    from distillery.core.errors import ConfigError

    with pytest.raises(ConfigError, match="report.primary=soft-control needs arm soft"):
        parse({"arms": {"with_teacher": ["hard"]}})
    with pytest.raises(ConfigError, match="report.primary='soft-teacher' is not a comparison; allowed: soft-control"):
        parse({"report": {"primary": "soft-teacher"}})
    assert parse({"arms": {"with_teacher": ["hard"]}, "report": {"primary": "hard-none"}}).report.primary_pair == \
        ("hard", "none")


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
    assert uses == {"none": False, "control": False, "soft": True, "hard": True, "fake": False}
    assert trial_run(PARAMS, "control", data, HP, 0).spec.name == PARAMS.student.model  # two tokens
    assert trial_run(PARAMS, "none", data, HP, 0).spec.name == PARAMS.student.baseline_model


def test_final_seeds_vary_initialisation_and_data_order():
    data = toy_data(size=8)
    best = Best(arm="soft", study_name="s", trial=0, objective=0.5, hparams=HP, n_trials=1, n_complete=1, n_pruned=0,
                epochs=5)
    a, b = final_run(PARAMS, "soft", data, best, seed=1), final_run(PARAMS, "soft", data, best, seed=2)
    assert a.recipe.seed != b.recipe.seed  # data order and augmentation draw from the recipe seed
    assert a.seed != b.seed  # initialisation: spec.build(seed)


def test_the_teacher_trains_with_its_own_label_smoothing():
    from distillery.recipe.arm_runs import teacher_run

    params = parse_params({"teacher": {"label_smoothing": 0.0, "epochs": 1}, "train": {"label_smoothing": 0.2}})
    _, run = teacher_run(params, toy_data(classes=3))
    assert run.recipe.train.label_smoothing == 0.0 and params.train.label_smoothing == 0.2
    assert run.recipe.train.model_copy(update={"label_smoothing": 0.2}) == params.train  # nothing else moved


def test_the_fake_arm_is_soft_s_study_and_loss_with_the_labels_as_teacher():
    recipe = {k: HP[k] for k in ("lr", "weight_decay", "mixing", "drop_path")}
    fake, soft = search_space(PARAMS, "fake", recipe), search_space(PARAMS, "soft", recipe)
    assert fake == soft  # same knobs and ranges, so the null gets the same tuning as the arm it is the null of
    run = trial_run(PARAMS, "fake", toy_data(size=8), HP, 0)
    loss = run.recipe.loss
    assert (loss.kind, loss.alpha, loss.tau, loss.kl_reduction) == ("fake", 0.5, 2.0, PARAMS.distill.soft.kl_reduction)
    assert run.spec.name == PARAMS.student.model and not run.uses_teacher
    assert ARMS["fake"].stage("sweep") == "sweep_kd@fake" and ARMS["control"].stage("final") == "final@control"
    five = [*PARAMS.arms.all, "fake"]
    assert comparison_pairs(five)[-1] == ("soft", "fake") and comparison_pairs(five)[0] == ("soft", "control")
    assert ("hard", "fake") not in comparison_pairs(five)


def test_common_random_numbers_are_really_shared_by_the_paired_arms_of_one_seed():
    """Seed s of control and of soft (the primary's two arms, one architecture) start from identical weights,
    see the same view stream and draw the same drop-path masks; the plain ViT shares the views. Another seed
    changes all of them."""
    import torch

    from distillery.recipe.droppath import epoch_masks

    data = toy_data(size=8)
    best = Best(arm="soft", study_name="x", trial=0, objective=0.9, hparams=HP, n_trials=1, n_complete=1, n_pruned=0,
                epochs=2)
    runs = {arm: final_run(PARAMS, arm, data, best, 3) for arm in ("none", "control", "soft")}
    control, soft = (runs[a].spec.build(runs[a].seed).state_dict() for a in ("control", "soft"))
    assert control.keys() == soft.keys() and all(torch.equal(control[k], soft[k]) for k in control)
    assert len({r.recipe.view_seed for r in runs.values()}) == 1 and runs["soft"].recipe.seed == runs["control"].recipe.seed
    rates = torch.full((2,), HP["drop_path"])
    assert torch.equal(epoch_masks(runs["soft"].recipe.seed, 0, 5, 8, rates),
                       epoch_masks(runs["control"].recipe.seed, 0, 5, 8, rates))
    other = final_run(PARAMS, "soft", data, best, 4)
    assert other.recipe.view_seed != runs["soft"].recipe.view_seed
    assert not torch.equal(other.spec.build(other.seed).state_dict()["pos_embed"], soft["pos_embed"])
    assert not torch.equal(epoch_masks(4, 0, 5, 8, rates), epoch_masks(3, 0, 5, 8, rates))


def test_a_cold_study_runs_cold_trials_and_a_warm_started_one_n_trials_for_every_arm():
    from distillery.core.search_spaces import new_trials

    p = parse_params({"sweep": {"n_trials": 2, "cold_trials": 12}})
    budgets = [study_budget(p, arm) for arm in ("none", "soft", "hard", "fake")]
    assert all(b == budgets[0] for b in budgets)  # one budget, whichever arm
    assert new_trials(budgets[0], n_warm=27) == 2
    assert new_trials(budgets[0], n_warm=0) == 12
    assert new_trials(study_budget(parse_params({"sweep": {"n_trials": 20, "cold_trials": 12}}), "none"), 0) == 20
