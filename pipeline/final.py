"""Stage final@<arm>: retrain the arm's best configuration once per seed in final.seeds.

The seeds train fused, train.fuse of them per step (fusion.py): each still its own run, model and
MLflow run, equal to the same seed trained alone up to floating-point summation order.

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
from distillery.training.plan import final_run, fused_group_size, teacher_cache
from distillery.training.fusion import chunks
from distillery.training.runs import Unit, tracked_fit, tracked_fit_group
from distillery.training.tracking import base_tags, setup_tracking, system_metrics_on


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
    plans = [final_run(p, arm.name, data, best, seed) for seed in p.final.seeds]
    k = fused_group_size(p, data, arm.name, len(plans), ranks.world)
    per_seed = {}

    def unit(run):
        return Unit(run.name, run.spec.build(run.seed), run.spec, run.recipe,
                    base_tags(layout, p, arm.stage("final"), arm=arm.name, seed=str(run.seed), model_kind="final",
                              **({"processes": str(ranks.world)} if ranks.world > 1 else {})),
                    run.log_params(p), layout.model(arm.name, run.seed), layout.history_file(arm.name, run.seed),
                    layout.checkpoint(run.name))

    try:
        for group in chunks(plans, k):
            units = [unit(run) for run in group]
            if len(units) == 1:
                u = units[0]
                results = [tracked_fit(name=u.name, net=u.net, spec=u.spec, data=data, recipe=u.recipe, tags=u.tags,
                                       log_params=u.log_params, model_path=u.model_path, history_path=u.history_path,
                                       checkpoint=u.checkpoint, teacher=teacher, teacher_cache=cache, ranks=ranks)]
            else:
                seeds = f"{group[0].seed}-{group[-1].seed}"
                results = tracked_fit_group(units, data, teacher=teacher, teacher_cache=cache,
                                            desc=f"{arm.name} seeds {seeds} ({len(units)} fused)",
                                            system_metrics_interval=(p.tracking.system_metrics_interval
                                                                     if system_metrics_on(p.tracking) else None))
            for run, result in zip(group, results):
                last = result.history[-1]
                per_seed[str(run.seed)] = {"objective": objective_of(result.history, p.sweep.objective_epochs),
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
