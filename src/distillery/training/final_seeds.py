"""The final runs of an arm: its best configuration retrained once per seed, and what the stage writes.

The seeds train fused, train.fuse of them per step (fusion.py): each still its own run, model and
MLflow run, equal to the same seed trained alone up to floating-point summation order. The pilot's
val predictions (metrics/val_predictions/<arm>.csv) are what the seed plan sizes the extra seeds from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..core.arms import Arm, load_best
from ..core.errors import ConfigError
from ..core.files import Best, atomic_path, objective_of, write_json
from ..core.config import Params
from ..core.paths import Layout
from ..core.tracking import base_tags, repro_parent, setup_tracking, system_metrics_interval
from ..data import load_prepared
from ..evaluation.evaluate import head_predictions
from ..recipe.arm_runs import RunPlan, final_run
from ..recipe.models import load_model
from .distributed import Ranks
from .fusion import chunks, fused_group_size
from .loop import resolve_device
from .machine import machine_info
from .runs import Unit, tracked_fit
from .teacher_cache import cache_for


@dataclass
class FinalSeeds:
    """What the seeds of one final (or extra) stage gave: each seed's val objective and head accuracies,
    and (rank 0) each seed's val predictions next to the labels."""

    per_seed: dict[str, dict[str, float]] = field(default_factory=dict)
    val_pred: dict[str, Any] = field(default_factory=dict)

    @property
    def objective_mean(self) -> float | None:
        objectives = [s["objective"] for s in self.per_seed.values()]
        return sum(objectives) / len(objectives) if objectives else None


def best_for_final(layout: Layout, params: Params, arm: Arm) -> Best:
    """The arm's winning configuration, refused when its study ran for another arm or epoch budget."""
    best = load_best(layout, params, arm.name)
    if best.arm != arm.name or best.epochs != params.student.epochs:
        raise ConfigError(f"{layout.best(arm.name)} is from a study of arm '{best.arm}' at {best.epochs} epochs, but "
                          f"this run trains '{arm.name}' at student.epochs={params.student.epochs}; rerun the sweep first "
                          f"(dvc repro {arm.stage('sweep')})")
    return best


def train_final_seeds(params: Params, layout: Layout, arm: Arm, best: Best, seeds: list[int], extra: bool,
                      ranks: Ranks) -> FinalSeeds:
    """Train `seeds` of the arm at `best`, fused in groups; under torchrun (final.nproc) one at a time."""
    p = params
    data = load_prepared(layout.prepared)
    teacher = (load_model(layout.teacher_model, expect_classes=data.num_classes, expect_chans=data.channels)[0]
               if arm.uses_teacher else None)
    tags = {}
    if ranks.main:
        setup_tracking(p.tracking, layout)
        tags = {"mlflow.parentRunId": repro_parent(layout, p)}  # one group per dvc repro in the run table
    if ranks.world > 1:
        tags["processes"] = str(ranks.world)
    cache = cache_for(p, layout) if arm.uses_teacher else None
    plans = [final_run(p, arm.name, data, best, seed) for seed in seeds]
    out = FinalSeeds(val_pred={"label": data.splits["val"].y})
    interval = system_metrics_interval(p.tracking)
    for group in chunks(plans, fused_group_size(p, data, arm.name, max(len(plans), 1), ranks.world)):
        units = [_unit(p, layout, arm, run, extra, tags) for run in group]
        desc = f"{arm.name} seeds {group[0].seed}-{group[-1].seed} ({len(units)} fused)" if len(units) > 1 else None
        results = tracked_fit(units, data, teacher=teacher, teacher_cache=cache, desc=desc, ranks=ranks,
                              system_metrics_interval=interval)
        for run, result in zip(group, results):
            last = result.history[-1]
            out.per_seed[str(run.seed)] = {"objective": objective_of(result.history, p.sweep.objective_epochs),
                                           **{k: v for k, v in last.items() if k.startswith("val_")}}
            if ranks.main:
                out.val_pred[f"seed_{run.seed}"] = head_predictions(result.net, data, "val", p.train)["avg"]
    return out


def _unit(p: Params, layout: Layout, arm: Arm, run: RunPlan, extra: bool, tags: dict[str, str]) -> Unit:
    return Unit(run.name, run.spec.build(run.seed), run.spec, run.recipe,
                base_tags(layout, p, arm.stage("final"), arm=arm.name, seed=str(run.seed), model_kind="final", **tags),
                run.log_params(p), layout.model(arm.name, run.seed, extra), layout.history_file(arm.name, run.seed, extra),
                layout.checkpoint(run.name))


def write_final(params: Params, layout: Layout, arm: Arm, best: Best, seeds: FinalSeeds, extra: bool,
                ranks: Ranks) -> None:
    """metrics/final/<arm>.json; the pilot's val predictions, or the extra stage's seed lists."""
    metrics = {"arm": arm.name, "hparams": best.hparams, "best_trial": best.trial, "best_trial_objective": best.objective,
               "epochs": params.student.epochs, "per_seed": seeds.per_seed, "objective_mean": seeds.objective_mean,
               "machine": {**machine_info(resolve_device(params.train.device)),
                           **({"processes": ranks.world} if ranks.world > 1 else {})}}
    write_json(layout.final_metrics(arm.name, extra), metrics)
    if extra:  # the folders are the stage's outputs even when the plan adds no seed
        for folder in (layout.model(arm.name, 0, True).parent, layout.history_file(arm.name, 0, True).parent):
            write_json(folder / "seeds.json", sorted(int(s) for s in seeds.per_seed))
    else:
        with atomic_path(layout.val_predictions(arm.name)) as tmp:
            pd.DataFrame(seeds.val_pred).to_csv(tmp, index=False)


def final_line(arm: Arm, best: Best, seeds: FinalSeeds, extra: bool) -> str:
    if not seeds.per_seed:
        return f"{arm.name}: the seed plan adds no seed after the pilot"
    source = (f"best trial: {best.objective:.4f}" if best.objective is not None
              else f"the recipe of {best.recipe_from}, no study of its own")
    return (f"{arm.name}: val objective {seeds.objective_mean:.4f} over {len(seeds.per_seed)} "
            f"{'extra ' if extra else ''}seed(s) ({source})")
