"""The epoch budget every arm trains at: student.epochs, or under `auto` what the budget stage chose on val.

The budget stage trains the recipe arm (sweep.recipe_arm) at the centre of search.* for each of
budget.rungs in turn, each rung a whole warm-up + cosine schedule of that length, and stops at the first
rung the next one beats by less than budget.min_gain points of the val objective. One rung, chosen once
on one arm's val accuracy, for every arm: the budget never depends on what distillation does on val.
Stages after it read metrics/budget.json through `resolve_epochs`, so `student.epochs` is an int again
everywhere downstream. Importing this module never imports torch.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from .config import ChoiceSpec, Params, SearchSpec
from .errors import ConfigError
from .files import read_json, write_json
from .paths import Layout


LADDER_COLUMNS = ("rung", "seed", "epoch", "val_acc")  # sweeps/budget/ladder.csv: every ladder run's val curve


class Rung(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int
    per_seed: dict[str, float]  # seed -> val objective (accuracy 0-1, mean of the last sweep.objective_epochs epochs)
    seconds: float

    @property
    def mean(self) -> float:
        return sum(self.per_seed.values()) / len(self.per_seed)

    @property
    def sd(self) -> float | None:
        v = list(self.per_seed.values())
        if len(v) < 2:
            return None
        m = self.mean
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


class EpochBudget(BaseModel):
    """metrics/budget.json."""

    model_config = ConfigDict(extra="forbid")

    epochs: int
    rule: str  # fixed (student.epochs) | ladder (chosen on val) | ladder-capped (still gaining at the last rung)
    arm: str | None = None
    recipe: dict[str, float] = {}
    min_gain: float | None = None
    rungs: list[Rung] = []

    def save(self, path: Path) -> None:
        write_json(path, self.model_dump())

    @classmethod
    def load(cls, path: Path) -> "EpochBudget":
        if not path.exists():
            raise ConfigError(f"student.epochs: auto needs {path}, which the budget stage writes; run it first "
                              "(dvc repro budget)")
        try:
            return cls.model_validate(read_json(path))
        except ValidationError as exc:
            raise ConfigError(f"{path} is not a budget this version wrote ({exc.error_count()} problem(s)); rerun the "
                              "budget stage (dvc repro budget)") from None


def gain(a: Rung, b: Rung) -> float:
    """Points of val objective the longer schedule b adds over a."""
    return 100 * (b.mean - a.mean)


def ladder_state(rungs: list[Rung], planned: list[int], min_gain: float) -> tuple[int | None, int | None, str]:
    """(the rung to train next or None; the chosen budget once the ladder stopped, else None; its rule).

    The ladder stops at the first rung whose successor gains less than min_gain points: that rung is the
    budget (the longer schedule did not pay). Still gaining at the last rung: the last rung, 'ladder-capped'."""
    for a, b in zip(rungs, rungs[1:]):
        if gain(a, b) < min_gain:
            return None, a.epochs, "ladder"
    if len(rungs) < len(planned):
        return planned[len(rungs)], None, "ladder"
    return None, rungs[-1].epochs, "ladder-capped"


def centre(spec: SearchSpec) -> float:
    """The middle of a search range (geometric on a log scale), or the middle choice."""
    if isinstance(spec, ChoiceSpec):
        return sorted(spec.choices)[(len(spec.choices) - 1) // 2]
    if spec.log:
        return math.sqrt(spec.low * spec.high)
    return (spec.low + spec.high) / 2


def resolve_epochs(params: Params, layout: Layout) -> Params:
    """The params with student.epochs an int: as given, or the budget stage's choice under auto."""
    if params.student.epochs != "auto":
        return params
    return params.at_epochs(EpochBudget.load(layout.budget).epochs)


def budget_line(budget: EpochBudget) -> str:
    """How the budget was set, in one sentence (the report's design section, the stage summary)."""
    if budget.rule == "fixed":
        return f"{budget.epochs} epochs for every arm, fixed by student.epochs"
    # ± the SD over the ladder's seeds: a gain smaller than it is seed noise, whatever min_gain says
    steps = ", ".join(f"{r.epochs} → {100 * r.mean:.1f}" + (f" ± {100 * r.sd:.1f}" if r.sd is not None else "") + " %"
                      for r in budget.rungs)
    why = (f"the first rung the next did not beat by {budget.min_gain:g} points" if budget.rule == "ladder"
           else f"the last rung: every longer schedule still gained ≥ {budget.min_gain:g} points, so the students "
                "may not have finished learning")
    return (f"{budget.epochs} epochs for every arm, chosen on val by the budget ladder ({budget.arm} at the centre of "
            f"the search ranges, {len(budget.rungs[0].per_seed)} seed(s) per rung; val objective by rung: {steps}): "
            f"{why}")
