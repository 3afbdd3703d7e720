"""One MLflow run per report: the answer where `mlflow ui` users look for it.

Metrics: per comparison Δ, the simultaneous interval and the Holm p; per arm the test accuracy.
Tags: the verdicts in words, the git commit, the DVC stage and experiment. Artifacts: the report,
its figures, effects.json and headline.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.config import Params
from ..core.paths import Layout
from ..core.tracking import base_tags, setup_tracking, start_run
from .stats import Comparison


def summary_metrics(comps: list[Comparison], evaluation: dict[str, Any], arms: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in comps:
        name = f"{k.arm}-{k.reference}"
        out.update({f"{name}.delta": k.diff, f"{name}.low": k.low, f"{name}.high": k.high, f"{name}.p_holm": k.p_holm})
    out.update({f"test_acc.{arm}": evaluation[arm]["test_acc"] for arm in arms if arm in evaluation})
    if "teacher" in evaluation:
        out["test_acc.teacher"] = evaluation["teacher"]["test_acc"]
    return {k: float(v) for k, v in out.items() if v is not None and abs(float(v)) != float("inf")}


def link_final_models(run_id: str, experiment_id: str, params_hash: str, arms: list[str]) -> int:
    """The final models this report summarises as the summary run's model inputs (its page lists them, each
    linking to the run that trained it): per arm and seed, the newest logged model of a final run with these
    params. Returns how many."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    client = mlflow.MlflowClient()
    finals = client.search_runs([experiment_id], f"tags.model_kind = 'final' and tags.params_hash = '{params_hash}'",
                                max_results=5000, order_by=["attributes.start_time DESC"])
    newest: dict[tuple[str, str], str] = {}
    for run in finals:
        key = (run.data.tags.get("arm", ""), run.data.tags.get("seed", ""))
        if key[0] in arms and key not in newest:
            outputs = client.get_run(run.info.run_id).outputs
            if outputs and outputs.model_outputs:
                newest[key] = outputs.model_outputs[-1].model_id
    models = [LoggedModelInput(model_id) for _, model_id in sorted(newest.items())]
    if models:
        client.log_inputs(run_id, models=models)
    return len(models)


def log_summary(layout: Layout, params: Params, comps: list[Comparison], evaluation: dict[str, Any],
                arms: list[str], files: list[Path]) -> str:
    import mlflow

    setup_tracking(params.tracking, layout, monitor=False)
    tags = {**base_tags(layout, params, "report", model_kind="summary"),
            **{f"verdict.{k.arm}-{k.reference}": k.verdict for k in comps},
            **{f"sized.{k.arm}-{k.reference}": str(k.sized).lower() for k in comps if k.sized is not None},
            **{f"role.{k.arm}-{k.reference}": k.role for k in comps}}
    settings = {"min_effect": params.report.min_effect, "alpha": params.report.alpha,
                "target_halfwidth": params.report.target_halfwidth, "arms": ",".join(arms),
                "primary": params.report.primary or "none"}
    with start_run("summary", tags, settings) as run:
        mlflow.log_metrics(summary_metrics(comps, evaluation, arms))
        link_final_models(run.info.run_id, run.info.experiment_id, tags["params_hash"], arms)
        for path in files:
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.exists():
                mlflow.log_artifact(str(path))
    return f"mlflow: summary run {run.info.run_id} ({len(comps)} comparisons)"
