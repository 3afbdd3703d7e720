"""Optuna studies over the distillation loss: one study per loss type, resumable, capped.

The study lives in an SQLite file that DVC keeps between runs (`persist: true`), so a rerun
continues where an interrupted one stopped. The study name carries a fingerprint of everything
that makes trials comparable (search space, epochs, recipe, teacher, data): change any of them
and a fresh study starts beside the old one instead of mixing incomparable trials.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from .config import HardLossConfig, RangeSpec, SoftLossConfig, SweepConfig

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
TUNED = ("alpha", "tau", "lr", "weight_decay")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


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


def n_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


@dataclass
class SweepResult:
    best: dict[str, Any]
    trials: list[dict[str, Any]]


def run_study(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int) -> SweepResult:
    """Run until `n_trials` trials have finished (completed or pruned) in this study, by any worker."""
    from optuna.study import MaxTrialsCallback

    remaining = n_trials - n_finished(study)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, callbacks=[MaxTrialsCallback(n_trials, states=FINISHED)],
                       catch=())
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
