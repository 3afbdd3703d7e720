"""Stage sweep@<arm>: the arm's Optuna study on the val split, at the final training budget.

Every arm gets the same study (trials, epochs, pruner, sampler seed); the distilled arms add λ (and
τ). Under `sweep.recipe: shared` only sweep.recipe_arm searches the recipe knobs; the distilled arms
search their own knobs at its winning recipe, and a no-teacher arm has nothing to search: its stage
records that it trains at the recipe arm's winner. Trials are asked train.fuse at a time and train fused (fusion.py); with
a shared sweep.storage they run one at a time. Run an extra worker on the same study with
`python pipeline/sweep.py --arm soft` in a second shell: both stop at sweep.n_trials.
"""

import argparse
from pathlib import Path

import mlflow

from distillery.core.arms import (ARMS, get_arm, has_study, load_best, new_trials, search_space, shares_recipe,
                                  study_budget)
from distillery.core.budget import resolve_epochs
from distillery.core.cli import StageContext, main_for
from distillery.core.errors import TrainingError
from distillery.core.files import Best, write_csv, write_json
from distillery.data import load_prepared
from distillery.training.models import check_model_names, load_model, state_digest
from distillery.training.plan import fused_group_size, teacher_cache
from distillery.core.tracking import base_tags, setup_tracking, start_run
from distillery.tuning.objective import make_batch_objective, make_objective, trial_checkpoints
from distillery.tuning.studies import (arm_sampler_for, open_arm_study, param_importance, run_shared_study, run_study,
                                      snapshot_study, study_name, suggest_space, summarize_study)
from distillery.tuning.warm_start import conditions, digest, warm_file, warm_start
from distillery.tuning.workers import run_workers


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arm", required=True, choices=list(ARMS), help="which arm to tune")
    parser.add_argument("--worker", action="store_true",
                        help="only run trials until the study is full (what sweep.workers starts; run it by hand on "
                             "another host to join a study on a shared sweep.storage)")


def body(ctx: StageContext) -> str:
    layout, arm = ctx.layout, get_arm(ctx.args.arm)
    p = resolve_epochs(ctx.params, layout)  # student.epochs: auto -> the budget stage's choice
    check_model_names(p)
    data = load_prepared(layout.prepared)
    teacher = (load_model(layout.teacher_model, expect_classes=data.num_classes, expect_chans=data.channels)[0]
               if arm.uses_teacher else None)
    setup_tracking(p.tracking, layout)
    budget = study_budget(p, arm.name)
    if not has_study(p, arm.name):
        return no_study(ctx, p, arm, budget)
    recipe = load_best(layout, p, p.sweep.recipe_arm).hparams if shares_recipe(p, arm.name) else None
    space = search_space(p, arm.name, recipe)
    # hashed once: the data hash reads every training and val image
    identity = (data.fingerprint(), state_digest(teacher) if teacher is not None else None)
    warm_path = warm_file(layout.root, p.sweep.warm_start, arm.name)
    fingerprint = {  # n_trials is left out: it is a stopping rule, raising it continues the same study
        "arm": arm.name, "budget": {k: v for k, v in budget.items() if k not in ("n_trials", "cold_trials")},
        "space": {k: v.model_dump() for k, v in space.items()},
        "kl_reduction": p.distill.soft.kl_reduction if arm.name in ("soft", "fake") else None,
        "student": p.student.model_dump(), "train": p.train.identity(), "augment": p.augment.model_dump(),
        "teacher": identity[1], "data": identity[0],
        **({"warm_start": digest(warm_path)} if warm_path is not None else {}),  # other committed trials: another study
    }
    out_dir = layout.sweep_dir(arm.name)
    name = study_name(arm.name, fingerprint)
    study = open_arm_study(out_dir / "study.db", name, budget, p.sweep)
    n_warm, warm_line = warm_start(study, warm_path, space, p.student.epochs, recipe,
                                   conditions(p, data, arm.name))
    new = new_trials(budget, n_warm)
    cap = n_warm + new
    tags = base_tags(layout, p, arm.stage("sweep"), arm=arm.name, model_kind="sweep_trial")

    def objective(batched=False):  # built where trials run: a coordinator of sweep.workers runs none
        make = make_batch_objective if batched else make_objective
        return make(p, arm.name, data, teacher, tags, teacher_cache(p, layout) if arm.uses_teacher else None,
                    checkpoint_dir=layout.checkpoint(arm.name).parent, identity=identity, space=space)

    # sweep.workers share the cap: each asks at most its share, or the first would take every trial
    share = -(-new // p.sweep.workers)
    fused = fused_group_size(p, data, arm.name, share)

    with start_run(f"sweep-{arm.name}", {**tags, "model_kind": "sweep"},
                   {"arm": arm.name, "budget": budget, "study_name": name}):
        if p.sweep.workers > 1 and not ctx.args.worker:
            import torch

            run_workers(p.sweep.workers, arm.name, Path(__file__).resolve(), ctx.args.params,
                        torch.cuda.device_count(), out_dir / "workers")
            result = summarize_study(study)
        elif p.sweep.storage:
            result = run_shared_study(study, objective(), cap)
        else:
            result = run_study(study, None, cap, lock_path=out_dir / "study.lock",
                               sampler_for=arm_sampler_for(budget), batch_objective=objective(batched=True),
                               batch=fused, draw=lambda trial: suggest_space(trial, space))
        if ctx.args.worker:
            return f"{arm.name} worker: the study holds {len(result.trials)} trials"
        if not result.best:
            raise TrainingError(f"sweep@{arm.name}: no trial completed; see the prune reasons in MLflow")
        mlflow.log_metrics({"best_objective": result.best["objective"], "n_trials": len(result.trials)})
    if p.sweep.storage:  # a local SQLite copy of the shared study: DVC's output, and readable offline
        snapshot_study(name, p.sweep.storage, out_dir / "study.db")
    best = Best(arm=arm.name, study_name=name, epochs=p.student.epochs, n_warm=n_warm, **result.best,
                recipe_from=p.sweep.recipe_arm if recipe is not None else None)
    best.save(layout.best(arm.name))
    write_json(out_dir / "importance.json", param_importance(study))
    write_csv(out_dir / "trials.csv", result.trials, TRIAL_COLUMNS)
    for path in trial_checkpoints(layout.checkpoint(arm.name).parent, arm.name):  # the study holds the trials now
        path.unlink(missing_ok=True)
    hp = ", ".join(f"{k}={v:.3g}" for k, v in best.hparams.items())
    return (f"{arm.name}: best trial #{best.trial} ({hp}), val objective {best.objective:.4f} over {len(result.trials)} "
            f"trials ({warm_line})")


TRIAL_COLUMNS = ("number", "state", "value", "epochs_run")


def no_study(ctx: StageContext, p, arm, budget: dict) -> str:
    """A no-teacher arm on the shared recipe: no trial to run. Its outputs say so (an empty study and
    trials.csv, a best.json without a trial), and its MLflow sweep run carries the same budget."""
    layout = ctx.layout
    out_dir = layout.sweep_dir(arm.name)
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


if __name__ == "__main__":
    main_for("sweep", body, add_args)
