"""Stage sweep@<arm>: the arm's Optuna study on the val split, at the final training budget.

Every arm gets the same study (trials, epochs, pruner, sampler seed, shared search space); the
distilled arms add λ (and τ). Trials are asked train.fuse at a time and train fused (fusion.py); with
a shared sweep.storage they run one at a time. Run an extra worker on the same study with
`python pipeline/sweep.py --arm soft` in a second shell: both stop at sweep.n_trials.
"""

import argparse
from pathlib import Path

import mlflow

from distillery.core.arms import ARMS, get_arm, search_space, study_budget
from distillery.core.cli import StageContext, main_for
from distillery.core.errors import TrainingError
from distillery.core.files import Best, write_csv, write_json
from distillery.data import load_prepared
from distillery.training.models import check_model_names, load_model, state_digest
from distillery.training.plan import fused_group_size, teacher_cache
from distillery.training.tracking import base_tags, setup_tracking, start_run
from distillery.tuning.objective import make_batch_objective, make_objective, trial_checkpoints
from distillery.tuning.studies import (arm_sampler_for, open_arm_study, param_importance, run_shared_study, run_study,
                                      snapshot_study, study_name, suggest_space, summarize_study)
from distillery.tuning.workers import run_workers


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arm", required=True, choices=list(ARMS), help="which arm to tune")
    parser.add_argument("--worker", action="store_true",
                        help="only run trials until the study is full (what sweep.workers starts; run it by hand on "
                             "another host to join a study on a shared sweep.storage)")


def body(ctx: StageContext) -> str:
    p, layout, arm = ctx.params, ctx.layout, get_arm(ctx.args.arm)
    check_model_names(p)
    data = load_prepared(layout.prepared)
    teacher = (load_model(layout.teacher_model, expect_classes=data.num_classes, expect_chans=data.channels)[0]
               if arm.uses_teacher else None)
    setup_tracking(p.tracking, layout)
    budget = study_budget(p, arm.name)
    # hashed once: the data hash reads every training and val image
    identity = (data.fingerprint(), state_digest(teacher) if teacher is not None else None)
    fingerprint = {  # n_trials is left out: it is a stopping rule, raising it continues the same study
        "arm": arm.name, "budget": {k: v for k, v in budget.items() if k != "n_trials"},
        "space": {k: v.model_dump() for k, v in search_space(p, arm.name).items()},
        "kl_reduction": p.distill.soft.kl_reduction if arm.name == "soft" else None,
        "student": p.student.model_dump(), "train": p.train.identity(), "augment": p.augment.model_dump(),
        "teacher": identity[1], "data": identity[0],
    }
    out_dir = layout.sweep_dir(arm.name)
    name = study_name(arm.name, fingerprint)
    study = open_arm_study(out_dir / "study.db", name, budget, p.sweep)
    tags = base_tags(layout, p, arm.stage("sweep"), arm=arm.name, model_kind="sweep_trial")

    def objective(batched=False):  # built where trials run: a coordinator of sweep.workers runs none
        make = make_batch_objective if batched else make_objective
        return make(p, arm.name, data, teacher, tags, teacher_cache(p, layout) if arm.uses_teacher else None,
                    checkpoint_dir=layout.checkpoint(arm.name).parent, identity=identity)

    # sweep.workers share the cap: each asks at most its share, or the first would take every trial
    share = -(-budget["n_trials"] // p.sweep.workers)
    fused = fused_group_size(p, data, arm.name, share)

    with start_run(f"sweep-{arm.name}", {**tags, "model_kind": "sweep"},
                   {"arm": arm.name, "budget": budget, "study_name": name}):
        if p.sweep.workers > 1 and not ctx.args.worker:
            import torch

            run_workers(p.sweep.workers, arm.name, Path(__file__).resolve(), ctx.args.params,
                        torch.cuda.device_count(), out_dir / "workers")
            result = summarize_study(study)
        elif p.sweep.storage:
            result = run_shared_study(study, objective(), budget["n_trials"])
        else:
            result = run_study(study, None, budget["n_trials"], lock_path=out_dir / "study.lock",
                               sampler_for=arm_sampler_for(budget), batch_objective=objective(batched=True),
                               batch=fused, draw=lambda trial: suggest_space(trial, search_space(p, arm.name)))
        if ctx.args.worker:
            return f"{arm.name} worker: the study holds {len(result.trials)} trials"
        if not result.best:
            raise TrainingError(f"sweep@{arm.name}: no trial completed; see the prune reasons in MLflow")
        mlflow.log_metrics({"best_objective": result.best["objective"], "n_trials": len(result.trials)})
    if p.sweep.storage:  # a local SQLite copy of the shared study: DVC's output, and readable offline
        snapshot_study(name, p.sweep.storage, out_dir / "study.db")
    best = Best(arm=arm.name, study_name=name, epochs=p.student.epochs, **result.best)
    best.save(layout.best(arm.name))
    write_json(out_dir / "importance.json", param_importance(study))
    write_csv(out_dir / "trials.csv", result.trials)
    for path in trial_checkpoints(layout.checkpoint(arm.name).parent, arm.name):  # the study holds the trials now
        path.unlink(missing_ok=True)
    hp = ", ".join(f"{k}={v:.3g}" for k, v in best.hparams.items())
    return f"{arm.name}: best trial #{best.trial} ({hp}), val objective {best.objective:.4f} over {len(result.trials)} trials"


if __name__ == "__main__":
    main_for("sweep", body, add_args)
