"""Stage sweep@<arm>: the arm's Optuna study on the val split, at the final training budget.

Every arm gets the same study (trials, epochs, pruner, sampler seed); the distilled arms add λ (and
τ) at the recipe arm's winning recipe (distillery/tuning/arm_sweep.py). Run an extra worker on the same
study with `python pipeline/sweep.py --arm soft --worker` in a second shell: both stop at the study's cap.
"""

import argparse
from pathlib import Path

from distillery.core.arms import ARMS, get_arm
from distillery.core.search_spaces import has_study
from distillery.core.budget import resolve_epochs
from distillery.core.cli import StageContext, main_for
from distillery.core.tracking import base_tags, setup_tracking, start_run
from distillery.recipe.models import check_model_names
from distillery.tuning.arm_sweep import ArmSweep, check_completed, record_no_study, sweep_line


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arm", required=True, choices=list(ARMS), help="which arm to tune")
    parser.add_argument("--worker", action="store_true",
                        help="only run trials until the study is full (what sweep.workers starts; run it by hand on "
                             "another host to join a study on a shared sweep.storage)")


def body(ctx: StageContext) -> str:
    layout, arm = ctx.layout, get_arm(ctx.args.arm)
    p = resolve_epochs(ctx.params, layout)  # student.epochs: auto -> the budget stage's choice
    check_model_names(p)
    setup_tracking(p.tracking, layout)
    if not has_study(p, arm.name):
        return record_no_study(p, layout, arm)
    sweep = ArmSweep.open(p, layout, arm)
    tags = base_tags(layout, p, arm.stage("sweep"), arm=arm.name, model_kind="sweep")
    with start_run(f"sweep-{arm.name}", tags, {"arm": arm.name, "budget": sweep.budget,
                                               "study_name": sweep.study.study_name}):
        result = sweep.run(ctx.args.worker, Path(__file__).resolve(), ctx.args.params)
        if ctx.args.worker:
            return f"{arm.name} worker: the study holds {len(result.trials)} trials"
        check_completed(arm, result)
    best = sweep.save(result)
    return sweep_line(arm, best, result, sweep.warm_line)


if __name__ == "__main__":
    main_for("sweep", body, add_args)
