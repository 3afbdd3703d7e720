"""Optuna studies over the distillation loss: one study per loss type, resumable, capped.

The study lives in an SQLite file that DVC keeps between runs (`persist: true`), so a rerun
continues where an interrupted one stopped. The study name carries a fingerprint of everything
that makes trials comparable (search space, epochs, recipe, teacher, data): change any of them
and a fresh study starts beside the old one instead of mixing incomparable trials.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from .config import HardLossConfig, RangeSpec, SoftLossConfig, SweepConfig

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
TUNED = ("alpha", "tau", "lr", "weight_decay")


def study_name(loss_kind: str, fingerprint_parts: dict[str, Any]) -> str:
    blob = json.dumps(fingerprint_parts, sort_keys=True, default=str)
    return f"distill-{loss_kind}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def make_pruner(cfg: SweepConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=max(1, cfg.epochs // 3))
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs)
    return optuna.pruners.NopPruner()


def open_study(storage_path: Path, name: str, cfg: SweepConfig, seed: int) -> optuna.Study:
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.startup_trials)
    return optuna.create_study(study_name=name, storage=f"sqlite:///{storage_path}", sampler=sampler,
                               pruner=make_pruner(cfg), direction="maximize", load_if_exists=True)


def suggest(trial: optuna.Trial, name: str, spec: RangeSpec) -> float:
    if spec.low == spec.high:
        return float(spec.low)
    return trial.suggest_float(name, spec.low, spec.high, log=spec.log)


def suggest_loss_params(trial: optuna.Trial, space: SoftLossConfig | HardLossConfig) -> dict[str, float]:
    out = {"alpha": suggest(trial, "alpha", space.alpha)}
    if isinstance(space, SoftLossConfig):
        out["tau"] = suggest(trial, "tau", space.tau)
    for extra in ("lr", "weight_decay"):
        spec = getattr(space, extra)
        if spec is not None:
            out[extra] = suggest(trial, extra, spec)
    return out


@dataclass
class SweepResult:
    best: dict[str, Any]
    trials: list[dict[str, Any]]


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_dead_local_worker(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
        if _is_dead_local_worker(worker) or now - beat > stale_after_s:
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", f"worker {worker or '?'} stopped mid-trial")
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            failed.append(t.number)
    return failed


def heartbeat(trial: optuna.Trial) -> None:
    """Call once per epoch: proves the worker running this trial is alive."""
    trial.set_user_attr("heartbeat", time.time())


def run_study(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int,
              lock_path: Path | None = None, stale_after_s: float = 1800.0) -> SweepResult:
    """Run trials until the study holds `n_trials` finished (completed or pruned) trials.

    Any number of workers may run this on the same study: a trial is only started, under a file
    lock, while finished plus running trials are fewer than the cap, so together they stop at
    exactly `n_trials`. A trial whose worker died is marked FAIL and replaced, never counted.
    """
    from filelock import FileLock

    lock = FileLock(str(lock_path or Path(tempfile.gettempdir()) / f"distillery-{study.study_name}.lock"))
    while True:
        with lock:
            fail_abandoned_trials(study, stale_after_s)
            taken = len(study.get_trials(deepcopy=False, states=(*FINISHED, optuna.trial.TrialState.RUNNING)))
            if taken >= n_trials:
                break
            trial = study.ask()
            trial.set_user_attr("worker", _worker_id())
            heartbeat(trial)
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
    return summarize_study(study)


def param_importance(study: optuna.Study) -> dict[str, float]:
    """fANOVA importance of each searched parameter; empty when too few trials completed."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = {k for t in completed for k in t.params}
    if len(completed) < 2 or not names:
        return {}
    if len(names) == 1:
        return {next(iter(names)): 1.0}
    try:
        imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every completed trial has the same value
        return {}
    return {k: float(v) for k, v in imp.items()}


def summarize_study(study: optuna.Study) -> SweepResult:
    trials = []
    for t in study.get_trials(deepcopy=False):
        hp = {k: t.user_attrs[k] for k in TUNED if k in t.user_attrs}
        trials.append({"number": t.number, "state": t.state.name, "value": t.value, **t.params, **hp,
                       "epochs_run": len(t.intermediate_values),
                       "last_val_acc": t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None, "prune_reason": t.user_attrs.get("prune_reason", "")})
    completed = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not completed:
        return SweepResult(best={}, trials=trials)
    best = study.best_trial
    hp = {k: best.user_attrs[k] for k in TUNED if k in best.user_attrs}
    return SweepResult(best={"trial": best.number, "val_acc": best.value, **best.params, **hp,
                             "n_complete": len(completed), "n_pruned": sum(t["state"] == "PRUNED" for t in trials)},
                       trials=trials)
