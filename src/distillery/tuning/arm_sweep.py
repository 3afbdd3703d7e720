"""An arm's sweep: its Optuna study on the val split at the final budget, run, summarised and written.

Every arm gets the same study (trials, epochs, pruner, sampler seed); the distilled arms add λ (and
τ). Under `sweep.recipe: shared` only sweep.recipe_arm searches the recipe knobs; the distilled arms
search their own knobs at its winning recipe, and a no-teacher arm has nothing to search
(`record_no_study`). Trials are asked train.fuse at a time and train fused (fusion.py); with a shared
sweep.storage they run one at a time; with sweep.workers, worker processes run them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
import torch.nn as nn

from ..core.arms import Arm, load_best
from ..core.search_spaces import new_trials, search_space, shares_recipe, study_budget
from ..core.config import Params, SearchSpec
from ..core.errors import TrainingError
from ..core.files import Best, write_csv, write_json
from ..core.paths import Layout
from ..core.tracking import base_tags, start_run
from ..data import Prepared, load_prepared
from ..recipe.models import load_model, state_digest
from ..training.fusion import fused_group_size
from ..training.teacher_cache import cache_for
from .objective import ArmObjective, trial_checkpoints
from .studies import (SweepResult, arm_sampler_for, open_arm_study, param_importance, run_shared_study, run_study,
                      snapshot_study, study_name, suggest_space, summarize_study)
from .warm_start import conditions, digest, warm_file, warm_start
from .workers import run_workers

TRIAL_COLUMNS = ("number", "state", "value", "epochs_run")


@dataclass
class ArmSweep:
    """One arm's study, opened with its committed warm-start trials, and what its trials train with."""

    params: Params
    layout: Layout
    arm: Arm
    data: Prepared
    teacher: nn.Module | None
    recipe: dict[str, float] | None  # the recipe arm's winner, under sweep.recipe: shared
    space: dict[str, SearchSpec]
    identity: tuple[str, str | None]  # (data fingerprint, teacher digest): hashed once
    budget: dict[str, Any]
    study: optuna.Study
    n_warm: int
    warm_line: str

    @classmethod
    def open(cls, params: Params, layout: Layout, arm: Arm) -> "ArmSweep":
        p = params
        data = load_prepared(layout.prepared)
        teacher = (load_model(layout.teacher_model, expect_classes=data.num_classes, expect_chans=data.channels)[0]
                   if arm.uses_teacher else None)
        budget = study_budget(p, arm.name)
        recipe = load_best(layout, p, p.sweep.recipe_arm).hparams if shares_recipe(p, arm.name) else None
        space = search_space(p, arm.name, recipe)
        # hashed once: the data hash reads every training and val image
        identity = (data.fingerprint(), state_digest(teacher) if teacher is not None else None)
        warm_path = warm_file(layout.root, p.sweep.warm_start, arm.name)
        name = study_name(arm.name, study_fingerprint(p, arm, budget, space, identity, warm_path))
        study = open_arm_study(layout.sweep_dir(arm.name) / "study.db", name, budget, p.sweep)
        n_warm, warm_line = warm_start(study, warm_path, space, p.student.epochs, recipe, conditions(p, data, arm.name))
        return cls(p, layout, arm, data, teacher, recipe, space, identity, budget, study, n_warm, warm_line)

    @property
    def cap(self) -> int:
        """The study's size: its warm-start trials and the new ones (every arm alike, new_trials)."""
        return self.n_warm + new_trials(self.budget, self.n_warm)

    @property
    def tags(self) -> dict[str, str]:
        return base_tags(self.layout, self.params, self.arm.stage("sweep"), arm=self.arm.name, model_kind="sweep_trial")

    def objective(self) -> ArmObjective:
        """Built where trials run: a coordinator of sweep.workers runs none."""
        p, arm = self.params, self.arm
        return ArmObjective(p, arm.name, self.data, self.teacher, self.tags,
                            cache_for(p, self.layout) if arm.uses_teacher else None,
                            checkpoint_dir=self.layout.checkpoint(arm.name).parent, identity=self.identity,
                            space=self.space)

    def run(self, worker: bool, script: Path, params_path: str | None) -> SweepResult:
        """The trials up to the cap, in this process, in sweep.workers processes, or on a shared study."""
        p, out_dir = self.params, self.layout.sweep_dir(self.arm.name)
        if p.sweep.workers > 1 and not worker:
            import torch

            run_workers(p.sweep.workers, self.arm.name, script, params_path, torch.cuda.device_count(),
                        out_dir / "workers")
            return summarize_study(self.study)
        if p.sweep.storage:
            return run_shared_study(self.study, self.objective(), self.cap)
        # sweep.workers share the cap: each asks at most its share, or the first would take every trial
        share = -(-new_trials(self.budget, self.n_warm) // p.sweep.workers)
        return run_study(self.study, self.objective(), self.cap, lock_path=out_dir / "study.lock",
                         sampler_for=arm_sampler_for(self.budget),
                         batch=fused_group_size(p, self.data, self.arm.name, share),
                         draw=lambda trial: suggest_space(trial, self.space))

    def save(self, result: SweepResult) -> Best:
        """best.json, importance.json and trials.csv; the trial checkpoints go (the study holds the trials)."""
        p, layout, arm = self.params, self.layout, self.arm
        out_dir = layout.sweep_dir(arm.name)
        if p.sweep.storage:  # a local SQLite copy of the shared study: DVC's output, and readable offline
            snapshot_study(self.study.study_name, p.sweep.storage, out_dir / "study.db")
        best = Best(arm=arm.name, study_name=self.study.study_name, epochs=p.student.epochs, n_warm=self.n_warm,
                    **result.best, recipe_from=p.sweep.recipe_arm if self.recipe is not None else None)
        best.save(layout.best(arm.name))
        write_json(out_dir / "importance.json", param_importance(self.study))
        write_csv(out_dir / "trials.csv", result.trials, TRIAL_COLUMNS)
        for path in trial_checkpoints(layout.checkpoint(arm.name).parent, arm.name):
            path.unlink(missing_ok=True)
        return best


def study_fingerprint(p: Params, arm: Arm, budget: dict, space: dict[str, SearchSpec],
                      identity: tuple[str, str | None], warm_path: Path | None) -> dict[str, Any]:
    """What makes trials comparable, and so one study. n_trials and cold_trials are left out: they are
    stopping rules, raising them continues the same study."""
    return {
        "arm": arm.name, "budget": {k: v for k, v in budget.items() if k not in ("n_trials", "cold_trials")},
        "space": {k: v.model_dump() for k, v in space.items()},
        "kl_reduction": p.distill.soft.kl_reduction if arm.name in ("soft", "fake") else None,
        "student": p.student.model_dump(), "train": p.train.identity(), "augment": p.augment.model_dump(),
        "teacher": identity[1], "data": identity[0],
        **({"warm_start": digest(warm_path)} if warm_path is not None else {}),  # other committed trials: another study
    }


def sweep_line(arm: Arm, best: Best, result: SweepResult, warm_line: str) -> str:
    hp = ", ".join(f"{k}={v:.3g}" for k, v in best.hparams.items())
    return (f"{arm.name}: best trial #{best.trial} ({hp}), val objective {best.objective:.4f} over {len(result.trials)} "
            f"trials ({warm_line})")


def check_completed(arm: Arm, result: SweepResult) -> None:
    if not result.best:
        raise TrainingError(f"sweep@{arm.name}: no trial completed; see the prune reasons in MLflow")
    mlflow.log_metrics({"best_objective": result.best["objective"], "n_trials": len(result.trials)})


def record_no_study(p: Params, layout: Layout, arm: Arm) -> str:
    """A no-teacher arm on the shared recipe: no trial to run. Its outputs say so (an empty study and
    trials.csv, a best.json without a trial), and its MLflow sweep run carries the same budget."""
    out_dir, budget = layout.sweep_dir(arm.name), study_budget(p, arm.name)
    name = f"{arm.name}-shared-recipe"
    open_arm_study(out_dir / "study.db", name, budget)
    tags = base_tags(layout, p, arm.stage("sweep"), arm=arm.name, model_kind="sweep")
    with start_run(f"sweep-{arm.name}", {**tags, "recipe_from": p.sweep.recipe_arm},
                   {"arm": arm.name, "budget": budget, "study_name": name}):
        mlflow.log_metrics({"n_trials": 0})
    Best(arm=arm.name, study_name=name, trial=None, objective=None, hparams={}, n_trials=0, n_complete=0, n_pruned=0,
         epochs=p.student.epochs, recipe_from=p.sweep.recipe_arm).save(layout.best(arm.name))
    write_json(out_dir / "importance.json", {})
    write_csv(out_dir / "trials.csv", [], TRIAL_COLUMNS)
    return (f"{arm.name}: nothing to search under sweep.recipe: shared; it trains at the winning recipe of "
            f"{p.sweep.recipe_arm} (sweeps/{p.sweep.recipe_arm}/best.json)")
