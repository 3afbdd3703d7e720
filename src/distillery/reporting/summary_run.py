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
        for path in files:
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.exists():
                mlflow.log_artifact(str(path))
    return f"mlflow: summary run {run.info.run_id} ({len(comps)} comparisons)"
