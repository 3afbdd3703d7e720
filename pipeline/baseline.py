"""Stage baseline: the plain ViT (no distillation token, no teacher), same size, recipe and seeds."""

from distillery.cli import StageContext, main_for
from distillery.config import check_model_names
from distillery.data import load_prepared
from distillery.final import train_final_models
from distillery.losses import DistillLoss
from distillery.tracking import setup_tracking


def body(ctx: StageContext) -> str:
    p, layout = ctx.params, ctx.layout
    check_model_names(p)
    data = load_prepared(layout.prepared)
    setup_tracking(p.tracking, layout)
    m = train_final_models(p, layout, data, name="vit", stage="baseline", loss=DistillLoss("none"), teacher=None,
                           extra_tags={"loss_type": "none", "model_kind": "baseline"})
    return f"vit: mean val acc {m['val_acc_mean']:.4f} over {len(p.final.seeds)} seed(s)"


if __name__ == "__main__":
    main_for("baseline", body)
