"""Stage evaluate: every model on the held-out test split.

Writes metrics/evaluation.json (accuracies and sizes: deterministic on CPU),
metrics/throughput.json (timings: never byte-identical), metrics/token_cosine.json (class vs
distillation token per layer) and metrics/test_predictions.csv.
"""

from distillery.cli import StageContext, main_for
from distillery.data import load_prepared
from distillery.evaluate import evaluate_all
from distillery.runs import write_json


def body(ctx: StageContext) -> str:
    p, layout = ctx.params, ctx.layout
    data = load_prepared(layout.prepared)
    result = evaluate_all(layout.models, data, p.train, p.evaluate.throughput_repeats)
    write_json(layout.metrics / "evaluation.json", result.metrics)
    write_json(layout.metrics / "throughput.json", result.throughput)
    write_json(layout.metrics / "token_cosine.json", result.token_cosine)
    result.predictions.to_csv(layout.metrics / "test_predictions.csv", index=False)
    parts = [f"{name} {m['test_acc']:.4f}" for name, m in result.metrics.items()]
    return "test acc: " + ", ".join(parts)


if __name__ == "__main__":
    main_for("evaluate", body)
