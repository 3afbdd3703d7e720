"""Optuna studies: the cap holds across reruns, a rerun resumes, pruning waits for warm-up."""

import numpy as np
import optuna
import pytest

from distillery.core.config import ChoiceSpec, RangeSpec, SweepConfig
from distillery.tuning.studies import (FINISHED, fail_abandoned_trials, first_prunable_epoch, open_study, run_study,
                                       study_name, suggest_space)

SPACE = {"alpha": RangeSpec(low=0.1, high=0.9), "tau": RangeSpec(low=1.0, high=8.0, log=True)}


def open_(path, cfg, name="s", warmup=1, epochs=3):
    return open_study(path, name, cfg, seed=0, warmup_epochs=warmup, epochs=epochs)


def one_by_one(fn):
    """A batch objective (what run_study takes) from a function of one trial: each trial of the batch in turn."""
    def batch(trials):
        out = []
        for trial in trials:
            try:
                out.append(fn(trial))
            except optuna.TrialPruned as exc:
                out.append(exc)
        return out

    return batch


def objective(trial):
    hp = suggest_space(trial, SPACE)
    for step in range(1, 4):
        trial.report(hp["alpha"] * step, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return hp["alpha"] - 0.01 * hp["tau"]


def test_cap_holds_across_reruns_and_the_study_resumes(tmp_path):
    cfg = SweepConfig(n_trials=4, startup_trials=2)
    first = run_study(open_(tmp_path / "study.db", cfg), one_by_one(objective), cfg.n_trials)
    assert len(first.trials) == 4
    again = run_study(open_(tmp_path / "study.db", cfg), one_by_one(objective), cfg.n_trials)
    assert [t["number"] for t in again.trials] == [0, 1, 2, 3]
    more = run_study(open_(tmp_path / "study.db", cfg), one_by_one(objective), 6)
    assert [t["number"] for t in more.trials] == list(range(6))
    assert more.best["objective"] >= first.best["objective"]


def test_interrupted_study_keeps_finished_trials(tmp_path):
    cfg = SweepConfig(n_trials=5)
    calls = {"n": 0}

    def dies_on_third(trial):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return objective(trial)

    with pytest.raises(KeyboardInterrupt):
        run_study(open_(tmp_path / "study.db", cfg), one_by_one(dies_on_third), cfg.n_trials)
    reopened = open_(tmp_path / "study.db", cfg)
    assert len(reopened.get_trials(states=FINISHED)) == 2
    result = run_study(reopened, one_by_one(objective), cfg.n_trials)
    assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in result.trials) == 5


def test_abandoned_trial_is_failed_through_the_public_api(tmp_path):
    study = open_(tmp_path / "study.db", SweepConfig())
    trial = study.ask()
    trial.set_user_attr("worker", "elsewhere:1")
    trial.set_user_attr("heartbeat", 0.0)  # never beat since 1970
    assert fail_abandoned_trials(study, stale_after_s=60) == [trial.number]
    assert study.trials[trial.number].state == optuna.trial.TrialState.FAIL


def test_a_killed_trials_slot_is_reused_not_one_another_worker_is_running(tmp_path):
    """Slots 0 done, 1 killed, 2 running in another (live) worker: the next trial takes slot 1. Counting
    the held trials would give 2, and two trials would then write one slot's checkpoint."""
    from distillery.core.processes import this_process

    study = open_(tmp_path / "study.db", SweepConfig(n_trials=3))
    for slot, state in [(0, "COMPLETE"), (1, "FAIL"), (2, None)]:
        trial = study.ask()
        trial.set_user_attr("slot", slot)
        trial.set_user_attr("worker", this_process())  # this process: alive, so slot 2 stays running
        if state == "COMPLETE":
            study.tell(trial, 0.5)
        elif state == "FAIL":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    drawn = []

    def objective(t):  # meanwhile the other worker finishes slot 2: until then this one waits for it
        drawn.append(t.user_attrs["slot"])
        study.tell(trial, 0.4)
        return 0.1

    result = run_study(study, one_by_one(objective), 3, poll_s=0.01)
    assert drawn == [1]  # one free place under the cap, and it is the killed trial's
    assert len(result.trials) == 3


def test_a_worker_returns_only_when_the_other_workers_trials_have_finished(tmp_path):
    """Its summary is the whole study's: returning while another worker's trial still ran, a worker whose
    own trials were all pruned reported "no trial completed" (two fused workers, four trials)."""
    import threading

    from distillery.core.processes import this_process

    study = open_(tmp_path / "study.db", SweepConfig(n_trials=2))
    other = study.ask()
    other.set_user_attr("slot", 0)
    other.set_user_attr("worker", this_process())  # alive: its trial is not abandoned
    threading.Timer(0.5, lambda: study.tell(other, 0.9)).start()

    def pruned(trial):
        raise optuna.TrialPruned()

    result = run_study(study, one_by_one(pruned), 2, poll_s=0.05)
    assert result.best["trial"] == 0 and result.best["objective"] == 0.9


def test_best_records_fixed_and_categorical_knobs(tmp_path):
    space = {"alpha": RangeSpec(low=0.5, high=0.5), "mixing": ChoiceSpec(choices=[0.8]),
             "lr": ChoiceSpec(choices=[1e-3, 2e-3])}
    result = run_study(open_(tmp_path / "study.db", SweepConfig(n_trials=2)),
                       one_by_one(lambda t: suggest_space(t, space)["lr"]), 2)
    assert result.best["hparams"]["alpha"] == 0.5 and result.best["hparams"]["mixing"] == 0.8
    assert result.best["hparams"]["lr"] in (1e-3, 2e-3)


def test_study_name_changes_with_what_makes_trials_comparable():
    assert study_name("soft", {"epochs": 3}) == study_name("soft", {"epochs": 3})
    assert study_name("soft", {"epochs": 3}) != study_name("soft", {"epochs": 4})
    assert study_name("soft", {"epochs": 3}) != study_name("hard", {"epochs": 3})


@pytest.mark.parametrize("pruner", ["successive_halving", "hyperband", "median"])
@pytest.mark.parametrize("warmup", [0, 2, 4])
def test_pruning_never_happens_before_warmup_ends(tmp_path, pruner, warmup):
    """Terrible trials after a good one: each pruner must wait until the first epoch after warm-up."""
    epochs = 8
    cfg = SweepConfig(n_trials=12, pruner=pruner, startup_trials=0, reduction_factor=2, prune_from_epoch=1)
    study = open_(tmp_path / "study.db", cfg, warmup=warmup, epochs=epochs)
    pruned_at = []

    def obj(trial):
        good = trial.number == 0
        for epoch in range(1, epochs + 1):
            trial.report((1.0 if good else 0.01 * trial.number) * epoch / epochs, epoch)
            if trial.should_prune():
                pruned_at.append(epoch)
                raise optuna.TrialPruned()
        return 1.0 if good else 0.0

    run_study(study, one_by_one(obj), cfg.n_trials)
    assert pruned_at, "the pruner never pruned: the test would prove nothing"
    assert min(pruned_at) >= first_prunable_epoch(warmup, epochs) == warmup + 1


def test_pruning_waits_for_prune_from_epoch_when_it_is_later_than_warmup():
    assert first_prunable_epoch(warmup_epochs=2, epochs=20, prune_from_epoch=8) == 8
    assert first_prunable_epoch(warmup_epochs=9, epochs=20, prune_from_epoch=8) == 10
    assert first_prunable_epoch(warmup_epochs=5, epochs=3, prune_from_epoch=1) == 3  # warm-up capped at epochs - 1


def test_an_unreachable_sweep_database_is_one_line(tmp_path):
    from distillery.core.config import SweepConfig
    from distillery.core.errors import TrainingError
    from distillery.tuning.studies import make_storage

    cfg = SweepConfig(storage="postgresql+psycopg://me:secret@127.0.0.1:1/optuna")
    with pytest.raises(TrainingError) as info:
        make_storage(tmp_path / "study.db", cfg)
    msg = str(info.value)
    assert "sweep.storage 'postgresql+psycopg://me:***@127.0.0.1:1/optuna' cannot be used" in msg
    assert "secret" not in msg and "\n" not in msg


def test_a_batch_draws_each_trial_from_its_own_slots_sampler(tmp_path):
    """Trials asked three at a time get the settings trials asked one at a time get in the same slots
    (all random draws here: start-up trials cover the study), so a killed trial redrawn in its slot,
    alone or in another batch, trains what it trained before."""
    from distillery.tuning.studies import slot_sampler

    cfg = SweepConfig(n_trials=3, startup_trials=3)
    sampler_for = lambda slot: slot_sampler(0, cfg.startup_trials, slot)  # noqa: E731
    draw = lambda t: suggest_space(t, SPACE)  # noqa: E731
    settings = {}
    for batch in (1, 3):
        study = open_(tmp_path / f"b{batch}.db", cfg)
        run_study(study, lambda trials: [suggest_space(t, SPACE)["alpha"] for t in trials], 3,
                  sampler_for=sampler_for, batch=batch, draw=draw)
        settings[batch] = {t.user_attrs["slot"]: t.params for t in study.trials}
    assert settings[3] == settings[1]
    assert len({round(p["alpha"], 12) for p in settings[3].values()}) == 3


def _study_with(n_complete: int, knobs: tuple[str, ...]):
    import optuna

    study = optuna.create_study(direction="maximize")
    dists = {k: optuna.distributions.FloatDistribution(0.0, 1.0) for k in knobs}
    rng = np.random.default_rng(0)
    for _ in range(n_complete):
        values = {k: float(rng.random()) for k in knobs}
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=values[knobs[0]]))
    return study


def test_importances_wait_for_ten_completed_trials_per_searched_knob():
    from distillery.core.search_spaces import importance_min_trials
    from distillery.tuning.studies import param_importance

    assert importance_min_trials(1) == 10 and importance_min_trials(4) == 40
    assert param_importance(_study_with(19, ("alpha", "tau"))) == {}  # the default study's 3 trials: nothing
    imp = param_importance(_study_with(20, ("alpha", "tau")))
    assert set(imp) == {"alpha", "tau"} and imp["alpha"] > imp["tau"]  # the objective is alpha itself
    assert param_importance(_study_with(39, ("lr", "weight_decay", "mixing", "drop_path"))) == {}
    assert param_importance(_study_with(30, ("alpha",))) == {}  # one knob: importance 1 by definition
