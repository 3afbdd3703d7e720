"""One sweep trial: train an arm with the trial's settings at the final budget, on the val split.

The trial is built by `recipe.arm_runs.trial_run`, the same function family as the final runs, so it
trains with exactly the final schedule. Each epoch's val accuracy goes to the pruner (never during
warm-up); the objective is the mean val accuracy of the last `sweep.objective_epochs` epochs. A
trial whose training fails (NaN or infinite loss) is pruned with the reason, so the sweep goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import mlflow
import optuna
import torch.nn as nn

from ..core.search_spaces import search_space, study_budget
from ..core.config import Params, SearchSpec
from ..core.errors import TrainingError
from ..core.files import objective_of
from ..data import Prepared
from ..training.loop import Member, fit
from ..recipe.models import count_params, state_digest
from ..training.runs import run_identity
from ..recipe.arm_runs import trial_run
from ..training.teacher_cache import TeacherCache
from ..core.tracking import EpochLogger, close_run, log_dataset_inputs, open_run
from .studies import first_prunable_epoch, heartbeat, suggest_space, trial_label


def _prune(trial: optuna.Trial, reason: str, run_id: str) -> optuna.TrialPruned:
    trial.set_user_attr("prune_reason", reason)
    client = mlflow.MlflowClient()
    client.set_tag(run_id, "prune_reason", reason)
    client.set_tag(run_id, "trial_state", "PRUNED")
    return optuna.TrialPruned(reason)


class ArmObjective:
    """The Optuna objective of one arm for a batch of trials trained fused (training.fusion): each trial
    its own member, MLflow run (nested in the active sweep run), pruning decision and checkpoint. A batch
    of one is a trial alone; a shared study (RDB) asks one at a time (studies.run_shared_study).

    With `checkpoint_dir` and trials that carry a slot (run_study), a trial checkpoints every epoch
    under its slot: the trial that replaces a killed one draws the same settings (studies.slot_sampler),
    resumes from the last epoch, and replays the earlier epochs to its new Optuna trial and MLflow run.
    The checkpoints stay until the sweep stage ends (trial_checkpoints): a kill between a trial's last
    epoch and Optuna's record of it then costs nothing. `identity`: (data.fingerprint(), the teacher's
    state_digest or None) when the caller has them already. `space`: the arm's search space (default
    search_space(params, arm); an arm on the shared recipe needs it with the recipe fixed)."""

    def __init__(self, params: Params, arm: str, data: Prepared, teacher: nn.Module | None, tags: dict[str, str],
                 teacher_cache: TeacherCache | None = None, checkpoint_dir: Path | None = None,
                 identity: tuple[str, str | None] | None = None, space: dict[str, SearchSpec] | None = None):
        self.params, self.arm, self.data, self.tags = params, arm, data, tags
        self.teacher, self.teacher_cache, self.checkpoint_dir = teacher, teacher_cache, checkpoint_dir
        self.space = space if space is not None else search_space(params, arm)
        self.budget = study_budget(params, arm)  # the same numbers the arm's study (pruner, sampler) is built from
        self.first_prunable = first_prunable_epoch(self.budget["warmup_epochs"], self.budget["epochs_per_trial"],
                                                   self.budget["prune_from_epoch"])
        # the same for every trial: hashed once, not per trial (the data hash reads every training image)
        self.identity = identity or (data.fingerprint(), state_digest(teacher) if teacher is not None else None)

    def __call__(self, trials: list[optuna.Trial]) -> list[float | optuna.TrialPruned]:
        active = mlflow.active_run()
        built = [self._member(t, active.info.run_id if active else None) for t in trials]
        members = [m for m, _ in built]
        distils = members[0].recipe.loss.needs_teacher
        labels = ", ".join(str(trial_label(t)) for t in trials)
        try:
            fit(members, self.data, teacher=self.teacher if distils else None,
                teacher_cache=self.teacher_cache if distils else None,
                desc=f"{self.arm} trial{'s' if len(trials) > 1 else ''} {labels}")
        except BaseException as exc:
            for _, run_id in built:
                close_run(run_id, exc)
            raise
        return [_outcome(t, m, run_id, self.budget["objective_epochs"]) for t, (m, run_id) in zip(trials, built)]

    def _member(self, trial: optuna.Trial, parent: str | None) -> tuple[Member, str]:
        p, arm, label = self.params, self.arm, trial_label(trial)
        run = trial_run(p, arm, self.data, suggest_space(trial, self.space), label)
        if run.recipe.epochs != self.budget["epochs_per_trial"]:
            raise TrainingError(f"{arm} trial {label}: {run.recipe.epochs} epochs, budget says "
                                f"{self.budget['epochs_per_trial']}")
        net = run.spec.build(run.seed)  # every trial starts from the same seed: only its settings differ
        logged = {**run.log_params(p), "num_params": count_params(net)}  # the keys a final run logs
        run_id = open_run(run.name, {**self.tags, "trial_number": str(label), "optuna_trial": str(trial.number)},
                          logged, nested_in=parent)
        log_dataset_inputs(run_id, self.data)
        slot = trial.user_attrs.get("slot")  # set by run_study; shared studies (RDB) retry through Optuna instead
        checkpoint = (self.checkpoint_dir / f"{arm}-trial-slot{slot}.pt"
                      if self.checkpoint_dir and slot is not None else None)
        data_fingerprint, teacher_digest = self.identity
        extra = run_identity(run.spec, data_fingerprint, teacher_digest if run.uses_teacher else None)
        return Member(net, run.recipe, f"{arm} trial {label}", checkpoint,
                      [EpochLogger(run_id=run_id), self._pruning(trial, run_id)], extra, replay=True), run_id

    def _pruning(self, trial: optuna.Trial, run_id: str) -> Callable[[dict[str, Any]], None]:
        """The epoch callback that reports val accuracy to the pruner (never before first_prunable)."""
        def report(record: dict[str, Any]) -> None:
            heartbeat(trial)
            trial.report(record["val_acc"], record["epoch"])
            if record["epoch"] >= self.first_prunable and trial.should_prune():
                raise _prune(trial, f"{self.params.sweep.pruner} pruner: val_acc {record['val_acc']:.4f} at epoch "
                                    f"{record['epoch']} below the other trials", run_id)

        return report


def _outcome(trial: optuna.Trial, m: Member, run_id: str, objective_epochs: int) -> float | optuna.TrialPruned:
    """A trial's value, or why it was pruned (a loss that stopped being finite prunes it with the reason)."""
    outcome = m.outcome
    if isinstance(outcome, TrainingError):
        outcome = _prune(trial, f"failed: {outcome}", run_id)
    if isinstance(outcome, optuna.TrialPruned):
        close_run(run_id, outcome)
        return outcome
    if outcome is not None:
        close_run(run_id, outcome)
        raise outcome
    value = objective_of(m.history, objective_epochs)
    client = mlflow.MlflowClient()
    client.log_metric(run_id, "objective", value)
    client.set_tag(run_id, "trial_state", "COMPLETE")
    close_run(run_id)
    return value


def trial_checkpoints(checkpoint_dir: Path, arm: str) -> list[Path]:
    """Every trial checkpoint of an arm's sweep; the stage deletes them once its outputs are written."""
    return sorted([*checkpoint_dir.glob(f"{arm}-trial-slot*.pt"), *checkpoint_dir.glob(f"{arm}-trial-slot*.pt.previous")])
