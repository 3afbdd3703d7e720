"""One sweep trial: train an arm with the trial's settings at the final budget, on the val split.

The trial is built by `training.plan.trial_run`, the same function family as the final runs, so it
trains with exactly the final schedule. Each epoch's val accuracy goes to the pruner (never during
warm-up); the objective is the mean val accuracy of the last `sweep.objective_epochs` epochs. A
trial whose training fails (NaN or infinite loss) is pruned with the reason, so the sweep goes on.
"""

from __future__ import annotations

from typing import Any, Callable

import mlflow
import optuna
import torch.nn as nn

from ..core.arms import search_space, study_budget
from ..core.config import Params
from ..core.errors import TrainingError
from ..core.files import objective_of
from ..data import Prepared
from ..training.loop import fit
from ..training.models import count_params
from ..training.plan import trial_run
from ..training.teacher_cache import TeacherCache
from ..training.tracking import EpochLogger, start_run
from .studies import first_prunable_epoch, heartbeat, suggest_space


def _prune(trial: optuna.Trial, reason: str) -> optuna.TrialPruned:
    trial.set_user_attr("prune_reason", reason)
    mlflow.set_tag("prune_reason", reason)
    mlflow.set_tag("trial_state", "PRUNED")
    return optuna.TrialPruned(reason)


def make_objective(params: Params, arm: str, data: Prepared, teacher: nn.Module | None,
                   tags: dict[str, str], teacher_cache: TeacherCache | None = None) -> Callable[[optuna.Trial], float]:
    space = search_space(params, arm)
    budget = study_budget(params, arm)  # the same numbers the arm's study (pruner, sampler) is built from
    first_prunable = first_prunable_epoch(budget["warmup_epochs"], budget["epochs_per_trial"],
                                          budget["prune_from_epoch"])

    def objective(trial: optuna.Trial) -> float:
        run = trial_run(params, arm, data, suggest_space(trial, space), trial.number)
        if run.recipe.epochs != budget["epochs_per_trial"]:
            raise TrainingError(f"{arm} trial {trial.number}: {run.recipe.epochs} epochs, budget says "
                                f"{budget['epochs_per_trial']}")

        def report(record: dict[str, Any]) -> None:
            heartbeat(trial)
            trial.report(record["val_acc"], record["epoch"])
            if record["epoch"] >= first_prunable and trial.should_prune():
                raise _prune(trial, f"{params.sweep.pruner} pruner: val_acc {record['val_acc']:.4f} at epoch "
                                    f"{record['epoch']} below the other trials")

        net = run.spec.build(run.seed)  # every trial starts from the same seed: only its settings differ
        logged = {**run.log_params(params), "num_params": count_params(net)}  # the keys a final run logs
        with start_run(run.name, {**tags, "trial_number": str(trial.number)}, logged, nested=True):
            try:
                history = fit(net, data, run.recipe, teacher=teacher if run.uses_teacher else None,
                              callbacks=[EpochLogger(), report], desc=f"{arm} trial {trial.number}",
                              teacher_cache=teacher_cache if run.uses_teacher else None)
            except TrainingError as exc:
                raise _prune(trial, f"failed: {exc}") from None
            value = objective_of(history, budget["objective_epochs"])
            mlflow.log_metric("objective", value)
            mlflow.set_tag("trial_state", "COMPLETE")
        return value

    return objective
