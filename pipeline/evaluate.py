"""Stage evaluate: every model on the held-out test split (the only stage that reads it).

Writes metrics/evaluation.json (accuracies and sizes: deterministic on CPU),
metrics/throughput.json (timings: never byte-identical), metrics/token_cosine.json (class vs
distillation token per layer), metrics/transfer.json (what the teacher has to give beyond the labels
on the training views, and how much of it each arm took, on train and test) and
metrics/test_predictions.csv. Then MLflow (publish.py): test metrics onto each final run, each model
as an MLflow Model, each arm's best seed by val registered.
"""

import numpy as np

from distillery.core.cli import StageContext, main_for
from distillery.core.files import atomic_path, write_json
from distillery.data import SPLITS, load_prepared
from distillery.evaluation.evaluate import evaluate_all, seed_models, teacher_signal
from distillery.evaluation.publish import publish
from distillery.training.loop import resolve_device
from distillery.training.machine import machine_info


def body(ctx: StageContext) -> str:
    p, layout = ctx.params, ctx.layout
    data = load_prepared(layout.prepared, splits=SPLITS)
    models = seed_models(layout, p.arms.all, p.final.seeds)
    result = evaluate_all(layout, models, data, p.train, p.evaluate.throughput_repeats)
    write_json(layout.metrics / "evaluation.json", result.metrics)
    device = resolve_device(p.train.device)
    write_json(layout.metrics / "throughput.json", {
        "images_per_s": {name: float(np.median(r)) for name, r in result.throughput.items()},  # the headline
        "images_per_s_rounds": result.throughput, "rounds": p.evaluate.throughput_repeats,
        "machine": machine_info(device)})
    write_json(layout.metrics / "token_cosine.json", result.token_cosine)
    write_json(layout.metrics / "transfer.json", {"teacher_signal": teacher_signal(layout, p, data), **result.transfer})
    with atomic_path(layout.metrics / "test_predictions.csv") as tmp:
        result.predictions.to_csv(tmp, index=False)
    print(publish(layout, p, data, models, result.metrics))
    parts = [f"{name} {m['test_acc']:.4f}" for name, m in result.metrics.items()]
    return "test acc: " + ", ".join(parts)


if __name__ == "__main__":
    main_for("evaluate", body)
