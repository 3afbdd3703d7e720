"""Stage final@<arm>: retrain the arm's best configuration once per seed in final.seeds.

Writes models/<arm>/seed_<s>.pt, metrics/history/<arm>/seed_<s>.csv and metrics/final/<arm>.json.
A no-teacher arm never loads the teacher (and its DVC stage does not depend on it).
"""

import argparse

from distillery.core.arms import ARMS, get_arm
from distillery.core.cli import StageContext, main_for
from distillery.core.errors import ConfigError
from distillery.core.files import Best, objective_of, write_json
from distillery.data import load_prepared
from distillery.training.distributed import Ranks, shutdown
from distillery.training.loop import resolve_device
from distillery.training.machine import machine_info
from distillery.training.models import check_model_names, load_model
from distillery.training.plan import final_run, teacher_cache
from distillery.training.runs import tracked_fit
from distillery.training.tracking import base_tags, setup_tracking


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arm", required=True, choices=list(ARMS), help="which arm to train")


def body(ctx: StageContext) -> str:
    p, layout, arm = ctx.params, ctx.layout, get_arm(ctx.args.arm)
    check_model_names(p)
    best = Best.load(layout.best(arm.name))
    if best.arm != arm.name or best.epochs != p.student.epochs:
        raise ConfigError(f"{layout.best(arm.name)} is from a study of arm '{best.arm}' at {best.epochs} epochs, but "
                          f"this run trains '{arm.name}' at student.epochs={p.student.epochs}; rerun the sweep first "
                          f"(dvc repro {arm.stage('sweep')})")
    data = load_prepared(layout.prepared)
    teacher = (load_model(layout.teacher_model, expect_classes=data.num_classes, expect_chans=data.channels)[0]
               if arm.uses_teacher else None)
    ranks = Ranks.from_env()  # final.nproc > 1: this body runs once per torchrun process; rank 0 writes
    if ranks.main:
        setup_tracking(p.tracking, layout)
    cache = teacher_cache(p, layout) if arm.uses_teacher else None
    per_seed = {}
    try:
        for seed in p.final.seeds:
            run = final_run(p, arm.name, data, best, seed)
            result = tracked_fit(
                name=run.name, net=run.spec.build(seed), spec=run.spec, data=data, recipe=run.recipe,
                tags=base_tags(layout, p, arm.stage("final"), arm=arm.name, seed=str(seed), model_kind="final",
                               **({"processes": str(ranks.world)} if ranks.world > 1 else {})),
                log_params=run.log_params(p), model_path=layout.model(arm.name, seed),
                history_path=layout.history_file(arm.name, seed), checkpoint=layout.checkpoint(run.name),
                teacher=teacher, teacher_cache=cache, ranks=ranks,
            )
            last = result.history[-1]
            per_seed[str(seed)] = {"objective": objective_of(result.history, p.sweep.objective_epochs),
                                   **{k: v for k, v in last.items() if k.startswith("val_")}}
    finally:
        shutdown()
    objectives = [s["objective"] for s in per_seed.values()]
    metrics = {"arm": arm.name, "hparams": best.hparams, "best_trial": best.trial, "best_trial_objective": best.objective,
               "epochs": p.student.epochs, "per_seed": per_seed, "objective_mean": sum(objectives) / len(objectives),
               "machine": {**machine_info(resolve_device(p.train.device)),
                           **({"processes": ranks.world} if ranks.world > 1 else {})}}
    if ranks.main:
        write_json(layout.final_metrics(arm.name), metrics)
    return (f"{arm.name}: val objective {metrics['objective_mean']:.4f} over {len(objectives)} seed(s) "
            f"(best trial: {best.objective:.4f})")


if __name__ == "__main__":
    main_for("final", body, add_args, nproc=lambda p: p.final.nproc)
