"""Stage seed_plan: how many seeds each arm runs, from the pilot seeds' val predictions (no torch).

Reads metrics/val_predictions/<arm>.csv (the pilot, written by final@<arm>) and only the *size* of the
test split (metrics/data.json); writes metrics/seed_plan.json, which extra@<arm> trains from.
"""

import pandas as pd

from distillery.core.cli import StageContext, main_for
from distillery.core.errors import ConfigError
from distillery.core.files import read_json, write_json
from distillery.reporting.seed_plan import plan_seeds


def body(ctx: StageContext) -> str:
    p, layout = ctx.params, ctx.layout
    preds = {}
    for arm in p.arms.all:
        path = layout.val_predictions(arm)
        if not path.exists():
            raise ConfigError(f"{path} not found; run the arm's final stage first (dvc repro)")
        preds[arm] = pd.read_csv(path)
    plan = plan_seeds(p, preds, read_json(layout.metrics / "data.json")["counts"]["test"])
    write_json(layout.seed_plan, plan)
    for arm, seeds in plan["arms"].items():
        write_json(layout.arm_seed_plan(arm), seeds)
    parts = [f"{k}: needs {c['seeds_needed']}, runs {c['seeds_planned']}" for k, c in plan["comparisons"].items()]
    return (f"±{p.report.target_halfwidth:g} points: " + ("; ".join(parts) or "nothing to compare")
            + f" (cap final.max_seeds={p.final.max_seeds})")


if __name__ == "__main__":
    main_for("seed_plan", body)
