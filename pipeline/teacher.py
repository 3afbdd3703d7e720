"""Stage teacher: train (or fine-tune) the CNN teacher; write models/teacher.pt and its metrics."""

from distillery.cli import StageContext, main_for
from distillery.config import check_model_names
from distillery.data import load_prepared
from distillery.evaluate import accuracy_of
from distillery.models import build_teacher, count_params
from distillery.recipes import teacher_recipe
from distillery.runs import tracked_fit, write_json
from distillery.tracking import base_tags, setup_tracking


def body(ctx: StageContext) -> str:
    p, layout = ctx.params, ctx.layout
    check_model_names(p)
    data = load_prepared(layout.prepared)
    setup_tracking(p.tracking, layout)
    net, spec = build_teacher(p.teacher.model, data.channels, data.num_classes, p.teacher.pretrained, p.seed)
    result = tracked_fit(
        name="teacher", net=net, spec=spec, data=data, recipe=teacher_recipe(p),
        tags=base_tags(layout, p, "teacher", model_kind="teacher"),
        log_params={"seed": p.seed, "teacher": p.teacher.model_dump(), "train": p.train.model_dump(),
                    "augment": p.augment.model_dump(), "data": p.data.model_dump()},
        model_path=layout.models / "teacher.pt", history_path=layout.history / "teacher.csv",
        checkpoint=layout.checkpoints / "teacher.pt",
    )
    metrics = {
        "val_acc": accuracy_of(result.net, data, "val", p.train),
        "test_acc": accuracy_of(result.net, data, "test", p.train),
        "num_params": count_params(result.net),
        "epochs": len(result.history),
    }
    write_json(layout.metrics / "teacher.json", metrics)
    return f"{p.teacher.model}: val {metrics['val_acc']:.4f}, test {metrics['test_acc']:.4f}"


if __name__ == "__main__":
    main_for("teacher", body)
