"""Stage final@<arm>: retrain the arm's best configuration once per pilot seed (final.seeds);
with --extra (stage extra@<arm>), once per seed metrics/seed_plan.json adds after the pilot.

The seeds train fused, train.fuse of them per step (fusion.py): each still its own run, model and
MLflow run, equal to the same seed trained alone up to floating-point summation order.

Writes models/<arm>/seed_<s>.pt, metrics/history/<arm>/seed_<s>.csv, metrics/final/<arm>.json and the
pilot's val predictions metrics/val_predictions/<arm>.csv (the extra seeds: the same under extra/).
A no-teacher arm never loads the teacher (and its DVC stage does not depend on it).
"""

import argparse

import pandas as pd

from distillery.core.arms import ARMS, get_arm, load_best
from distillery.core.budget import resolve_epochs
from distillery.core.cli import StageContext, main_for
from distillery.core.errors import ConfigError
from distillery.core.files import atomic_path, objective_of, read_json, write_json
from distillery.data import load_prepared
from distillery.evaluation.evaluate import head_predictions
from distillery.training.distributed import Ranks, shutdown
from distillery.training.loop import resolve_device
from distillery.training.machine import machine_info
from distillery.training.models import check_model_names, load_model
from distillery.training.plan import final_run, fused_group_size, teacher_cache
from distillery.training.fusion import chunks
from distillery.training.runs import Unit, tracked_fit, tracked_fit_group
from distillery.core.tracking import base_tags, repro_parent, setup_tracking, system_metrics_on


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
    layout, arm = ctx.layout, get_arm(ctx.args.arm)
    p = resolve_epochs(ctx.params, layout)  # student.epochs: auto -> the budget stage's choice
    check_model_names(p)
    best = load_best(layout, p, arm.name)
    if best.arm != arm.name or best.epochs != p.student.epochs:
        raise ConfigError(f"{layout.best(arm.name)} is from a study of arm '{best.arm}' at {best.epochs} epochs, but "
                          f"this run trains '{arm.name}' at student.epochs={p.student.epochs}; rerun the sweep first "
                          f"(dvc repro {arm.stage('sweep')})")
    data = load_prepared(layout.prepared)
    teacher = (load_model(layout.teacher_model, expect_classes=data.num_classes, expect_chans=data.channels)[0]
               if arm.uses_teacher else None)
    ranks = Ranks.from_env()  # final.nproc > 1: this body runs once per torchrun process; rank 0 writes
    parent = {}
    if ranks.main:
        setup_tracking(p.tracking, layout)
        parent = {"mlflow.parentRunId": repro_parent(layout, p)}  # one group per dvc repro in the run table
    cache = teacher_cache(p, layout) if arm.uses_teacher else None
    extra = ctx.args.extra
    plans = [final_run(p, arm.name, data, best, seed) for seed in seeds_to_train(ctx, arm.name)]
    k = fused_group_size(p, data, arm.name, max(len(plans), 1), ranks.world)
    per_seed, val_pred = {}, {"label": data.splits["val"].y}

    def unit(run):
        return Unit(run.name, run.spec.build(run.seed), run.spec, run.recipe,
                    base_tags(layout, p, arm.stage("final"), arm=arm.name, seed=str(run.seed), model_kind="final",
                              **({"processes": str(ranks.world)} if ranks.world > 1 else {}), **parent),
                    run.log_params(p), layout.model(arm.name, run.seed, extra),
                    layout.history_file(arm.name, run.seed, extra),
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
                if ranks.main:
                    val_pred[f"seed_{run.seed}"] = head_predictions(result.net, data, "val", p.train)["avg"]
    finally:
        shutdown()
    objectives = [s["objective"] for s in per_seed.values()]
    mean = sum(objectives) / len(objectives) if objectives else None
    metrics = {"arm": arm.name, "hparams": best.hparams, "best_trial": best.trial, "best_trial_objective": best.objective,
               "epochs": p.student.epochs, "per_seed": per_seed, "objective_mean": mean,
               "machine": {**machine_info(resolve_device(p.train.device)),
                           **({"processes": ranks.world} if ranks.world > 1 else {})}}
    if ranks.main:
        write_json(layout.final_metrics(arm.name, extra), metrics)
        if extra:  # the folders are the stage's outputs even when the plan adds no seed
            for folder in (layout.model(arm.name, 0, True).parent, layout.history_file(arm.name, 0, True).parent):
                write_json(folder / "seeds.json", sorted(int(s) for s in per_seed))
        else:
            with atomic_path(layout.val_predictions(arm.name)) as tmp:
                pd.DataFrame(val_pred).to_csv(tmp, index=False)
    if not objectives:
        return f"{arm.name}: the seed plan adds no seed after the pilot"
    source = (f"best trial: {best.objective:.4f}" if best.objective is not None
              else f"the recipe of {best.recipe_from}, no study of its own")
    return f"{arm.name}: val objective {mean:.4f} over {len(objectives)} {'extra ' if extra else ''}seed(s) ({source})"


if __name__ == "__main__":
    main_for("final", body, add_args, nproc=lambda p: p.final.nproc)
