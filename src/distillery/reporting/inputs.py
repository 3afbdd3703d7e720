"""Everything the report reads, loaded from the files earlier stages wrote (no torch, no models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..core.budget import EpochBudget, resolve_epochs
from ..core.config import Params
from ..core.arms import load_best
from ..core.files import Best, planned_extra_seeds, read_history_csv, read_json
from ..core.paths import Layout


@dataclass
class ReportInputs:
    params: Params
    arms: list[str]
    data_summary: dict[str, Any]
    skipped: list[dict[str, str]]
    classes: list[str]
    teacher: dict[str, Any]
    evaluation: dict[str, Any]
    throughput: dict[str, float]
    predictions: pd.DataFrame
    token_cosine: dict[str, list[float]]
    histories: dict[str, dict[int, list[dict[str, float]]]]  # arm (or "teacher") -> seed -> history
    best: dict[str, Best]  # hparams complete: a shared-recipe arm's include the recipe arm's winners
    trials: dict[str, pd.DataFrame]
    importance: dict[str, dict[str, float]]
    finals: dict[str, dict[str, Any]]  # the pilot's and the extra seeds' per_seed merged
    seed_plan: dict[str, Any] | None = None
    transfer: dict[str, Any] | None = None  # metrics/transfer.json: the teacher's signal and each arm's fidelity
    budget: EpochBudget | None = None  # metrics/budget.json: the epoch budget and how it was chosen

    def seeds_of(self, arm: str) -> list[int]:
        """The seeds an arm was evaluated with (pilot and extra)."""
        return sorted(int(s) for s in self.evaluation.get(arm, {}).get("per_seed", {}))

    def test_correct(self, arm: str, seeds: list[int]) -> "np.ndarray":
        """(seeds × test images) 0/1 of the arm's inference rule, from test_predictions.csv."""
        y = self.predictions["label"].to_numpy()
        head = inference_head(arm)
        return np.stack([self.predictions[f"{arm}_s{s}_{head}"].to_numpy() == y for s in seeds]).astype(np.float64)

    def per_seed_test_acc(self) -> dict[str, dict[int, float]]:
        """Test accuracy of the inference rule (averaged heads where there are two) per arm and seed."""
        return {arm: {int(s): v["test_acc_avg"] for s, v in self.evaluation[arm]["per_seed"].items()}
                for arm in self.arms if arm in self.evaluation}

    def final_val_acc(self) -> dict[str, dict[int, float]]:
        """Last epoch's val accuracy per arm and final seed, from the histories (empty histories left out)."""
        return {arm: {int(s): h[-1]["val_acc"] for s, h in self.histories.get(arm, {}).items() if h}
                for arm in self.arms}


def load_inputs(layout: Layout, params: Params) -> ReportInputs:
    params = resolve_epochs(params, layout)  # student.epochs: auto -> the number every arm trained for
    arms = params.arms.all
    histories: dict[str, dict[int, list[dict[str, float]]]] = {}
    if (layout.history / "teacher.csv").exists():
        histories["teacher"] = {params.seed: read_history_csv(layout.history / "teacher.csv")}
    plan = read_json(layout.seed_plan) if layout.seed_plan.exists() else None
    extra = planned_extra_seeds(layout.seed_plan, arms)
    for arm in arms:
        histories[arm] = {s: read_history_csv(layout.history_file(arm, s)) for s in params.final.seeds}
        histories[arm] |= {s: read_history_csv(layout.history_file(arm, s, True)) for s in extra[arm]}
    skipped = layout.prepared / "skipped.json"
    cosine = layout.metrics / "token_cosine.json"
    transfer = layout.metrics / "transfer.json"
    return ReportInputs(
        params=params, arms=arms,
        data_summary=read_json(layout.metrics / "data.json"),
        skipped=read_json(skipped) if skipped.exists() else [],
        classes=read_json(layout.prepared / "classes.json"),
        teacher=read_json(layout.metrics / "teacher.json"),
        evaluation=read_json(layout.metrics / "evaluation.json"),
        throughput=read_json(layout.metrics / "throughput.json"),
        predictions=pd.read_csv(layout.metrics / "test_predictions.csv"),
        token_cosine=read_json(cosine) if cosine.exists() else {},
        histories=histories,
        best={arm: load_best(layout, params, arm) for arm in arms},
        trials={arm: pd.read_csv(layout.sweep_dir(arm) / "trials.csv") for arm in arms},
        importance={arm: read_json(p) for arm in arms if (p := layout.sweep_dir(arm) / "importance.json").exists()},
        finals={arm: _merged_finals(layout, arm) for arm in arms},
        seed_plan=plan,
        transfer=read_json(transfer) if transfer.exists() else None,
        budget=EpochBudget.load(layout.budget) if layout.budget.exists() else None,
    )


def _merged_finals(layout: Layout, arm: str) -> dict[str, Any]:
    final = read_json(layout.final_metrics(arm))
    if (path := layout.final_metrics(arm, True)).exists():
        final["per_seed"] = {**final["per_seed"], **read_json(path)["per_seed"]}
    return final


def inference_head(arm: str, head: str = "avg") -> str:
    """The prediction column suffix of `head`; the plain ViT has only its class head."""
    return "cls" if arm == "none" else head


def seed_columns(pred: pd.DataFrame, arm: str, head: str = "avg") -> list[str]:
    """Prediction columns of one arm's head, one per seed."""
    head = inference_head(arm, head)
    return sorted(c for c in pred.columns if c.startswith(f"{arm}_s") and c.endswith(f"_{head}"))
