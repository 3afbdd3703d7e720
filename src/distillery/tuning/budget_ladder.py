"""The budget ladder (student.epochs: auto): how long every arm trains, chosen on the recipe arm's val curve.

Each rung is a whole schedule of that many epochs (warm-up, then cosine to min_lr): a rung's end is where
that schedule stops, not a point on a longer run's curve, which the cosine would flatten only because
its learning rate falls. The recipe is the centre of search.* (the recipe study tunes it afterwards at
the chosen budget); the seeds are their own (not `seed`, not the final seeds) and train fused. Each run
is a tracked run (checkpointed, resumable, restored after a kill between rungs, logged to MLflow).
"""

from __future__ import annotations

import time

from ..core.search_spaces import recipe_space
from ..core.budget import LADDER_COLUMNS, EpochBudget, Rung, centre, ladder_state
from ..core.config import Params
from ..core.files import objective_of, write_csv
from ..core.paths import Layout
from ..core.tracking import base_tags
from ..data import Prepared
from ..training.fusion import chunks
from ..recipe.arm_runs import arm_run
from ..training.fusion import fused_group_size
from ..training.runs import Unit, tracked_fit

SEED_OFFSET = 1000  # ladder seeds: seed + 1000 + i, apart from `seed` (trials) and the final seeds


def ladder_seeds(params: Params) -> list[int]:
    return [params.seed + SEED_OFFSET + i for i in range(params.budget.seeds)]


def train_rung(params: Params, layout: Layout, data: Prepared, epochs: int, recipe: dict[str, float]) -> tuple[Rung, list]:
    """Every ladder seed of the recipe arm at `epochs`; (the rung, its epoch rows for ladder.csv)."""
    p, arm = params.at_epochs(epochs), params.sweep.recipe_arm
    plans = [arm_run(p, arm, data, recipe, s, f"budget-{epochs}ep-seed{s}") for s in ladder_seeds(params)]
    folder = layout.budget_runs / f"{epochs}ep"
    units = [Unit(r.name, r.spec.build(r.seed), r.spec, r.recipe,
                  base_tags(layout, p, "budget", arm=arm, seed=str(r.seed), model_kind="budget",
                            budget_epochs=str(epochs)),
                  r.log_params(p), folder / f"seed_{r.seed}.pt", folder / f"seed_{r.seed}.csv",
                  layout.checkpoint(r.name)) for r in plans]
    started, per_seed, rows = time.perf_counter(), {}, []
    for group in chunks(list(zip(plans, units)), fused_group_size(p, data, arm, len(units))):
        results = tracked_fit([u for _, u in group], data, desc=f"budget {epochs} epochs ({len(group)} fused)")
        for (run, _), result in zip(group, results):
            per_seed[str(run.seed)] = objective_of(result.history, params.sweep.objective_epochs)
            rows += [{"rung": epochs, "seed": run.seed, "epoch": h["epoch"], "val_acc": h["val_acc"]}
                     for h in result.history]
    return Rung(epochs=epochs, per_seed=per_seed, seconds=round(time.perf_counter() - started, 1)), rows


def run_ladder(params: Params, layout: Layout, data: Prepared) -> EpochBudget:
    """Train rung after rung until the ladder stops (core.budget.ladder_state); write ladder.csv."""
    b = params.budget
    recipe = {k: centre(spec) for k, spec in recipe_space(params).items()}
    rungs, rows = [], []
    nxt, chosen, rule = b.rungs[0], None, "ladder"
    while nxt is not None:
        rung, curve = train_rung(params, layout, data, nxt, recipe)
        rungs.append(rung)
        rows += curve
        nxt, chosen, rule = ladder_state(rungs, b.rungs, b.min_gain)
    write_csv(layout.budget_runs / "ladder.csv", rows, LADDER_COLUMNS)
    return EpochBudget(epochs=chosen, rule=rule, arm=params.sweep.recipe_arm, recipe=recipe, min_gain=b.min_gain,
                       rungs=rungs)

