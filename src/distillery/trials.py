"""One sweep trial: train the student with the trial's λ/τ on the val split, report each epoch.

A trial whose training fails (NaN or infinite loss) is pruned with the reason, so the sweep goes
on; the reason is kept on the Optuna trial and as MLflow tags.
"""

from __future__ import annotations

from typing import Any, Callable

import mlflow
import optuna
import torch.nn as nn

from .config import Params
from .data import Prepared
from .errors import TrainingError
from .recipes import make_loss, student_recipe, student_spec
from .sweep import heartbeat, suggest_loss_params
from .tracking import EpochLogger, start_run
from .train import fit


def _prune(trial: optuna.Trial, reason: str) -> optuna.TrialPruned:
    trial.set_user_attr("prune_reason", reason)
    mlflow.set_tag("prune_reason", reason)
    mlflow.set_tag("trial_state", "PRUNED")
    return optuna.TrialPruned(reason)


def make_objective(params: Params, kind: str, data: Prepared, teacher: nn.Module,
                   tags: dict[str, str]) -> Callable[[optuna.Trial], float]:
    space = getattr(params.distill, kind)
    spec = student_spec(params, data, distilled=True)
    epochs = params.sweep.epochs

    def objective(trial: optuna.Trial) -> float:
        hp = suggest_loss_params(trial, space)
        for key, value in hp.items():
            trial.set_user_attr(key, value)
        loss = make_loss(params, kind, hp["alpha"], hp.get("tau", 1.0))
        recipe = student_recipe(params, loss, epochs, params.seed, hp.get("lr"), hp.get("weight_decay"))

        def report(record: dict[str, Any]) -> None:
            heartbeat(trial)
            trial.report(record["val_acc"], record["epoch"])
            if trial.should_prune():
                raise _prune(trial, f"{params.sweep.pruner} pruner: val_acc {record['val_acc']:.4f} at epoch "
                                    f"{record['epoch']} below the other trials")

        with start_run(f"{kind}-trial-{trial.number}", {**tags, "trial_number": str(trial.number)},
                       {"loss": kind, **hp, "epochs": epochs}, nested=True):
            net = spec.build(params.seed)  # every trial starts from the same weights: only its settings differ
            try:
                history = fit(net, data, recipe, teacher=teacher, callbacks=[EpochLogger(), report],
                              desc=f"{kind} trial {trial.number}")
            except TrainingError as exc:
                raise _prune(trial, f"failed: {exc}") from None
            mlflow.set_tag("trial_state", "COMPLETE")
        return history[-1]["val_acc"]

    return objective
