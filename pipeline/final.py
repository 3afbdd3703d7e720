"""Stage final@<arm>: retrain the arm's best configuration once per pilot seed (final.seeds);
with --extra (stage extra@<arm>), once per seed metrics/seed_plan.json adds after the pilot.

Writes models/<arm>/seed_<s>.pt, metrics/history/<arm>/seed_<s>.csv, metrics/final/<arm>.json and the
pilot's val predictions metrics/val_predictions/<arm>.csv (the extra seeds: the same under extra/).
A no-teacher arm never loads the teacher (and its DVC stage does not depend on it).
The training itself: distillery/training/final_seeds.py.
"""

import argparse

from distillery.core.arms import ARMS, get_arm
from distillery.core.budget import resolve_epochs
from distillery.core.cli import StageContext, main_for
from distillery.core.errors import ConfigError
from distillery.core.files import read_json
from distillery.recipe.models import check_model_names
from distillery.training.distributed import Ranks, shutdown
from distillery.training.final_seeds import best_for_final, final_line, train_final_seeds, write_final


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arm", required=True, choices=list(ARMS), help="which arm to train")
    parser.add_argument("--extra", action="store_true", help="train the seeds metrics/seed_plan.json adds after the pilot")


def seeds_to_train(ctx: StageContext, arm: str) -> list[int]:
    if not ctx.args.extra:
        return list(ctx.params.final.seeds)
    path = ctx.layout.arm_seed_plan(arm)
    if not path.exists():
        raise ConfigError(f"{path} not found; run the seed_plan stage first (dvc repro seed_plan)")
    return list(read_json(path)["extra_seeds"])


def body(ctx: StageContext) -> str:
    layout, arm, extra = ctx.layout, get_arm(ctx.args.arm), ctx.args.extra
    p = resolve_epochs(ctx.params, layout)  # student.epochs: auto -> the budget stage's choice
    check_model_names(p)
    best = best_for_final(layout, p, arm)
    ranks = Ranks.from_env()  # final.nproc > 1: this body runs once per torchrun process; rank 0 writes
    try:
        seeds = train_final_seeds(p, layout, arm, best, seeds_to_train(ctx, arm.name), extra, ranks)
    finally:
        shutdown()
    if ranks.main:
        write_final(p, layout, arm, best, seeds, extra, ranks)
    return final_line(arm, best, seeds, extra)


if __name__ == "__main__":
    main_for("final", body, add_args, nproc=lambda p: p.final.nproc)
