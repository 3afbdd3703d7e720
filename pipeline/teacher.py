"""Stage teacher: train (or fine-tune) the CNN teacher; write models/teacher.pt and its val metrics.

The test split is not read here: only evaluate reads it.
"""

from distillery.core.cli import StageContext, main_for
from distillery.core.files import write_json
from distillery.data import load_prepared
from distillery.training.loop import resolve_device
from distillery.training.machine import machine_info
from distillery.recipe.models import check_model_names, count_params
from distillery.recipe.arm_runs import teacher_run
from distillery.training.runs import Unit, tracked_fit
from distillery.core.tracking import base_tags, setup_tracking, system_metrics_interval


def body(ctx: StageContext) -> str:
    p, layout = ctx.params, ctx.layout
    check_model_names(p)
    data = load_prepared(layout.prepared)
    setup_tracking(p.tracking, layout)
    net, run = teacher_run(p, data)
    unit = Unit(run.name, net, run.spec, run.recipe, base_tags(layout, p, "teacher", model_kind="teacher"),
                {"seed": p.seed, "teacher": p.teacher.model_dump(), "train": p.train.model_dump(),
                 "augment": p.augment.model_dump(), "data": p.data.model_dump()},
                layout.teacher_model, layout.history / "teacher.csv", layout.checkpoint("teacher"))
    (result,) = tracked_fit([unit], data, system_metrics_interval=system_metrics_interval(p.tracking))
    metrics = {"val_acc": result.history[-1]["val_acc"], "num_params": count_params(result.net),
               "epochs": len(result.history), "machine": machine_info(resolve_device(p.train.device))}
    write_json(layout.metrics / "teacher.json", metrics)
    return f"{p.teacher.model}: val {metrics['val_acc']:.4f}"


if __name__ == "__main__":
    main_for("teacher", body)
