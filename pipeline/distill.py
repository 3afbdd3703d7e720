"""Stage distill@<loss>: train the DeiT student with the sweep's best λ/τ, once per final seed."""

import argparse
import json

from distillery.cli import StageContext, main_for
from distillery.config import check_model_names
from distillery.data import load_prepared
from distillery.errors import ConfigError
from distillery.final import train_final_models
from distillery.models import load_model
from distillery.recipes import make_loss
from distillery.tracking import setup_tracking


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loss", required=True, choices=["soft", "hard"], help="which distillation loss")


def body(ctx: StageContext) -> str:
    p, layout, kind = ctx.params, ctx.layout, ctx.args.loss
    check_model_names(p)
    best_path = layout.sweeps / kind / "best.json"
    if not best_path.exists():
        raise ConfigError(f"{best_path} not found; run the sweep first (dvc repro sweep@{kind})")
    best = json.loads(best_path.read_text())
    loss = make_loss(p, kind, best["alpha"], best.get("tau", 1.0))
    data = load_prepared(layout.prepared)
    teacher, _, _ = load_model(layout.models / "teacher.pt")
    setup_tracking(p.tracking, layout)
    m = train_final_models(p, layout, data, name=f"deit_{kind}", stage=f"distill@{kind}", loss=loss, teacher=teacher,
                           extra_tags={"loss_type": kind, "model_kind": "student"},
                           lr=best.get("lr"), weight_decay=best.get("weight_decay"))
    return f"deit_{kind} (alpha={loss.alpha:.3g}, tau={loss.tau:.3g}): mean val acc {m['val_acc_mean']:.4f} over {len(p.final.seeds)} seed(s)"


if __name__ == "__main__":
    main_for("distill", body, add_args)
