"""Optuna mechanics: one study per arm, resumable, capped, through Optuna's public API only.

By default the study lives in an SQLite file that DVC keeps between runs (`persist: true`), so a
rerun continues where an interrupted one stopped; workers on one machine take turns under a file
lock and stop at exactly the cap. With `sweep.storage` set to a database URL (PostgreSQL), workers
on any host share the study through Optuna's RDB storage: heartbeats mark a killed worker's trial
failed after `sweep.grace_period`, RetryFailedTrialCallback retries it with the same settings (its
reported epochs kept), and MaxTrialsCallback stops each worker at the cap. The study name carries a fingerprint of everything
that makes trials comparable (search space, epochs, recipe, teacher, data): change any of them
and a fresh study starts beside the old one instead of mixing incomparable trials.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from ..core.search_spaces import importance_min_trials
from ..core.config import ChoiceSpec, SearchSpec, SweepConfig
from ..core.errors import TrainingError
from ..core.files import atomic_path
from ..core.processes import is_gone_here, this_process

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def study_name(arm: str, fingerprint_parts: dict[str, Any]) -> str:
    blob = json.dumps(fingerprint_parts, sort_keys=True, default=str)
    return f"{arm}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def first_prunable_epoch(warmup_epochs: int, epochs: int, prune_from_epoch: int = 1) -> int:
    """No trial is judged while its learning rate is still warming up (the loop caps warm-up at epochs - 1),
    nor before `prune_from_epoch`: right after warm-up every trial still sits near chance, and ranking
    there ranks noise."""
    return max(min(warmup_epochs, max(0, epochs - 1)) + 1, prune_from_epoch)


def make_pruner(cfg: SweepConfig, warmup_epochs: int, epochs: int) -> optuna.pruners.BasePruner:
    """Every pruner first looks at a trial at the end of `first_prunable_epoch`."""
    first = first_prunable_epoch(warmup_epochs, epochs, cfg.prune_from_epoch)
    if cfg.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=cfg.reduction_factor)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=epochs,
                                              reduction_factor=cfg.reduction_factor)
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=first)  # prunes from step == n_warmup_steps on
    return optuna.pruners.NopPruner()


def shown_url(url: str) -> str:
    """A storage URL for messages and logs: the password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def make_storage(storage_path: Path, sweep: SweepConfig | None = None) -> str | optuna.storages.BaseStorage:
    """The arm's SQLite file, or the shared database of `sweep.storage` with heartbeats and retries."""
    if sweep is None or sweep.storage is None:
        storage_path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{storage_path}"
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    try:
        return RDBStorage(sweep.storage, heartbeat_interval=sweep.heartbeat_interval,
                          grace_period=sweep.grace_period or 2 * sweep.heartbeat_interval,
                          failed_trial_callback=RetryFailedTrialCallback(max_retry=sweep.max_retry,
                                                                         inherit_intermediate_values=True),
                          engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:  # driver missing, server down, bad credentials: one line for the user
        why = " ".join(str(exc).split())[:200]
        raise TrainingError(f"sweep.storage '{shown_url(sweep.storage)}' cannot be used ({type(exc).__name__}: "
                            f"{why}); start the database or fix the URL") from None


def slot_sampler(seed: int, startup_trials: int, slot: int) -> optuna.samplers.TPESampler:
    """The sampler that draws the study's `slot`-th trial (slot = trials finished or running before it).

    Seeded by the slot rather than left to advance in one process: a sweep killed and rerun draws
    what the uninterrupted one would have, and a trial replacing one whose worker died gets the
    dead one's settings (and so resumes its checkpoint). constant_liar: a trial asked while others of its
    batch still run (fused sweeps ask several at once) is drawn as if they had done badly, away from them."""
    return optuna.samplers.TPESampler(seed=seed + slot, n_startup_trials=startup_trials, constant_liar=True)


def open_study(storage_path: Path, name: str, cfg: SweepConfig, seed: int, warmup_epochs: int,
               epochs: int, sweep: SweepConfig | None = None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = slot_sampler(seed, cfg.startup_trials, 0)
    return optuna.create_study(study_name=name, storage=make_storage(storage_path, sweep), sampler=sampler,
                               pruner=make_pruner(cfg, warmup_epochs, epochs), direction="maximize",
                               load_if_exists=True)


def open_arm_study(storage_path: Path, name: str, budget: dict[str, Any],
                   sweep: SweepConfig | None = None) -> optuna.Study:
    """The study of one arm, built from nothing but its budget (`core.arms.study_budget`): what the
    equal-budget invariant compares is exactly what the pruner and sampler are made of. `sweep`
    says only where the study is stored (and how dead workers are detected), never what it searches."""
    cfg = SweepConfig(n_trials=budget["n_trials"], pruner=budget["pruner"], reduction_factor=budget["reduction_factor"],
                      prune_from_epoch=budget["prune_from_epoch"], startup_trials=budget["startup_trials"],
                      objective_epochs=budget["objective_epochs"])
    return open_study(storage_path, name, cfg, budget["sampler_seed"], budget["warmup_epochs"],
                      budget["epochs_per_trial"], sweep)


def arm_sampler_for(budget: dict[str, Any]) -> Callable[[int], optuna.samplers.BaseSampler]:
    """run_study's `sampler_for` of an arm's study: its budget's seed and start-up trials, per slot."""
    return lambda slot: slot_sampler(budget["sampler_seed"], budget["startup_trials"], slot)


def suggest(trial: optuna.Trial, name: str, spec: SearchSpec) -> float:
    """A fixed knob (low == high, or one choice) is recorded but not searched."""
    if isinstance(spec, ChoiceSpec):
        if len(spec.choices) == 1:
            return float(spec.choices[0])
        return float(trial.suggest_categorical(name, spec.choices))
    if spec.low == spec.high:
        return float(spec.low)
    return trial.suggest_float(name, spec.low, spec.high, log=spec.log)


def suggest_space(trial: optuna.Trial, space: dict[str, SearchSpec]) -> dict[str, float]:
    hp = {name: suggest(trial, name, spec) for name, spec in space.items()}
    for name, value in hp.items():  # fixed knobs are not trial params: keep every value on the trial
        trial.set_user_attr(f"hp_{name}", value)
    return hp


@dataclass
class SweepResult:
    best: dict[str, Any]
    trials: list[dict[str, Any]]


def fail_abandoned_trials(study: optuna.Study, stale_after_s: float) -> list[int]:
    """Mark RUNNING trials whose worker is gone as FAIL, so they stop holding a place under the cap.

    A worker on this host is gone when its process no longer exists; a worker elsewhere when it
    has not reported an epoch for `stale_after_s` seconds.
    """
    failed = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
        if is_gone_here(worker) or now - beat > stale_after_s:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            print(f"sweep: trial {t.number} failed: worker {worker or '?'} stopped mid-trial; it will be replaced")
            failed.append(t.number)
    return failed


def heartbeat(trial: optuna.Trial) -> None:
    """Call once per epoch: proves the worker running this trial is alive."""
    trial.set_user_attr("heartbeat", time.time())


def run_shared_study(study: optuna.Study, objective: BatchObjective, n_trials: int) -> SweepResult:
    """Run trials on a database study shared with workers anywhere, until it holds `n_trials` finished.

    There is no lock across hosts: each worker checks the count before it starts and after each
    trial (MaxTrialsCallback), so with W workers the study can end with up to W - 1 trials over the
    cap (each started while the count was below it). A killed worker's trial stops sending
    heartbeats; the next trial any worker starts fails it, and the retry callback queues it again."""
    from optuna.study import MaxTrialsCallback

    def tracked(trial: optuna.Trial) -> float:  # one trial at a time: a batch of one
        trial.set_user_attr("worker", this_process())
        (outcome,) = objective([trial])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    if len(study.get_trials(deepcopy=False, states=FINISHED)) < n_trials:
        study.optimize(tracked, callbacks=[MaxTrialsCallback(n_trials, states=FINISHED)], gc_after_trial=False)
    return summarize_study(study)


def free_slot(held: list[optuna.trial.FrozenTrial]) -> int:
    """The lowest slot no finished or running trial holds. Not simply their count: when a killed
    trial's slot lies below one another worker is still running, the count would hand out the running
    one again, and two trials would share (and overwrite) one slot's checkpoint."""
    taken = {trial_label(t) for t in held}
    return next(k for k in range(len(taken) + 1) if k not in taken)


def run_study(study: optuna.Study, objective: BatchObjective, n_trials: int,
              lock_path: Path | None = None, stale_after_s: float = 1800.0,
              sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None = None, *, batch: int = 1,
              draw: Callable[[optuna.Trial], Any] | None = None, poll_s: float = 1.0) -> SweepResult:
    """Run trials until the study holds `n_trials` finished (completed or pruned) trials.

    Trials are asked `batch` at a time (ask/tell) and run together by `objective`, which returns
    each one's value, or the TrialPruned it ended with.
    Any number of workers may run this on the same study: trials are only asked, under a file lock,
    while finished plus running trials are fewer than the cap, so together they stop at exactly
    `n_trials`. A worker returns only once every trial has finished (polling every `poll_s` s), so its
    summary is the whole study's. A trial whose worker died is marked FAIL and replaced, never counted.
    `sampler_for(slot)` (slot_sampler) draws each trial; the trial records its slot in user attr "slot".
    `draw(trial)` (suggest_space) draws its settings right when it is asked, under its slot's sampler:
    the objective's own suggestions come later, when the study's sampler is the batch's last slot's,
    and would otherwise draw every trial of a batch from that one sampler.
    """
    from filelock import FileLock

    lock = FileLock(str(lock_path or Path(tempfile.gettempdir()) / f"distillery-{study.study_name}.lock"))
    while True:
        with lock:
            fail_abandoned_trials(study, stale_after_s)
            held: list[Any] = study.get_trials(deepcopy=False, states=(*FINISHED, optuna.trial.TrialState.RUNNING))
            if len(held) >= n_trials:
                if len(study.get_trials(deepcopy=False, states=FINISHED)) >= n_trials:
                    break
                trials = []  # the rest run in other workers: wait, and take over any whose worker dies
            else:
                trials = [_ask(study, held, sampler_for, draw) for _ in range(min(batch, n_trials - len(held)))]
        if not trials:
            time.sleep(poll_s)
            continue
        try:
            outcomes = objective(trials)
        except BaseException:
            for trial in trials:
                study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            raise
        for trial, outcome in zip(trials, outcomes):
            if isinstance(outcome, optuna.TrialPruned):
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, outcome)
    return summarize_study(study)


BatchObjective = Callable[[list[optuna.Trial]], list["float | optuna.TrialPruned"]]


def _ask(study: optuna.Study, held: list[Any], sampler_for, draw=None) -> optuna.Trial:
    """A new trial in the lowest free slot, drawn by that slot's sampler; `held` gains it. Trials asked
    earlier in the same batch are still running: constant_liar samplers (slot_sampler) draw away from them."""
    slot = free_slot(held)
    if sampler_for is not None:
        study.sampler = sampler_for(slot)
    trial = study.ask()
    trial.set_user_attr("slot", slot)
    trial.set_user_attr("worker", this_process())
    if draw is not None:
        draw(trial)
    heartbeat(trial)
    held.append(trial)
    return trial


def snapshot_study(study_name: str, storage_url: str, path: Path) -> None:
    """Copy a database study into a fresh SQLite file (atomically)."""
    with atomic_path(path) as tmp:
        optuna.copy_study(from_study_name=study_name, from_storage=storage_url, to_storage=f"sqlite:///{tmp}")


def param_importance(study: optuna.Study) -> dict[str, float]:
    """fANOVA importance of each searched parameter; empty below importance_min_trials completed trials, and
    for a single searched knob (its importance is 1 by definition: nothing is ranked)."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = {k for t in completed for k in t.params}
    if len(names) < 2 or len(completed) < importance_min_trials(len(names)):
        return {}
    try:
        imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every completed trial has the same value
        return {}
    return {k: float(v) for k, v in imp.items()}


def hparams_of(t: optuna.trial.FrozenTrial) -> dict[str, float]:
    return {k[3:]: v for k, v in t.user_attrs.items() if k.startswith("hp_")}


def trial_label(t: optuna.trial.FrozenTrial | optuna.Trial) -> int:
    """A trial's place in the budget: its slot (run_study), else Optuna's number (shared studies).
    A trial replacing a killed one takes the killed one's slot, so labels match an uninterrupted sweep."""
    return int(t.user_attrs.get("slot", t.number))


def summarize_study(study: optuna.Study) -> SweepResult:
    """Every finished trial (state, hparams, epochs run, objective) by label, and the best completed one.
    Failed trials (a killed worker's) stay in the study and in MLflow; they are not part of the budget."""
    trials = []
    for t in sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: (trial_label(t), t.number)):
        steps = t.intermediate_values
        trials.append({"number": trial_label(t), "state": t.state.name, "value": t.value, **hparams_of(t),
                       "epochs_run": t.user_attrs.get("epochs_run", len(steps)),  # a warm-start trial says it
                       "last_val_acc": t.user_attrs.get("last_val_acc", steps[max(steps)] if steps else None),
                       "prune_reason": t.user_attrs.get("prune_reason", ""),
                       "warm_start": bool(t.user_attrs.get("warm_start", False))})
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        return SweepResult(best={}, trials=trials)
    best = study.best_trial
    return SweepResult(best={"trial": trial_label(best), "objective": best.value, "hparams": hparams_of(best),
                             "n_trials": len(trials), "n_complete": len(completed),
                             "n_pruned": sum(t["state"] == "PRUNED" for t in trials)},
                       trials=trials)
