"""What each arm's study searches, and with which budget (the same for every arm).

The recipe knobs (search.*) are every arm's, or under `sweep.recipe: shared` only sweep.recipe_arm's (the
others train at its winner); the distilled arms add their own λ (and τ). `study_budget` is everything a
study may spend: the sweep stage opens the study from it, and a test checks it is equal for every arm.
"""

from __future__ import annotations

from .config import ChoiceSpec, Params, RangeSpec, SearchSpec


def recipe_space(params: Params) -> dict[str, SearchSpec]:
    """The recipe knobs (search.*): the same ranges for every arm that tunes them."""
    return {k: getattr(params.search, k) for k in type(params.search).model_fields}


def own_space(params: Params, arm: str) -> dict[str, SearchSpec]:
    """The knobs only this arm has: λ (and τ) of the distillation losses."""
    if arm == "soft":
        return {"alpha": params.distill.soft.alpha, "tau": params.distill.soft.tau}
    if arm == "hard":
        return {"alpha": params.distill.hard.alpha}
    if arm == "fake":
        return {"alpha": params.distill.fake.alpha, "tau": params.distill.fake.tau}
    return {}


def shares_recipe(params: Params, arm: str) -> bool:
    """Whether the arm trains at sweep.recipe_arm's winning recipe instead of tuning its own."""
    return params.sweep.recipe == "shared" and arm != params.sweep.recipe_arm


def has_study(params: Params, arm: str) -> bool:
    """Whether the arm's sweep has anything to search (a no-teacher arm on the shared recipe has not)."""
    return not shares_recipe(params, arm) or bool(own_space(params, arm))


def search_space(params: Params, arm: str, recipe: dict[str, float] | None = None) -> dict[str, SearchSpec]:
    """The recipe knobs, then the arm's own. Under the shared recipe an arm other than the recipe arm
    gets the recipe fixed at `recipe` (the recipe arm's winning hparams)."""
    space = recipe_space(params)
    if shares_recipe(params, arm):
        if recipe is None:
            raise ValueError(f"arm {arm} trains at the shared recipe: pass {params.sweep.recipe_arm}'s winning hparams")
        space = {k: _fixed(spec, recipe[k]) for k, spec in space.items()}
    return space | own_space(params, arm)


def _fixed(spec: SearchSpec, value: float) -> SearchSpec:
    if isinstance(spec, ChoiceSpec):
        return ChoiceSpec(choices=[value])
    return RangeSpec(low=value, high=value, log=spec.log and value > 0)


def study_budget(params: Params, arm: str) -> dict:
    """What the arm's study may spend: the sweep stage opens the study from this, and a test checks
    it is the same for every arm."""
    return {"n_trials": params.sweep.n_trials, "cold_trials": params.sweep.cold_trials, "epochs_per_trial": params.student.epochs,
            "pruner": params.sweep.effective_pruner(), "reduction_factor": params.sweep.reduction_factor,
            "prune_from_epoch": params.sweep.prune_from_epoch,
            "startup_trials": params.sweep.startup_trials, "sampler_seed": params.seed,
            "objective_epochs": params.sweep.objective_epochs, "warmup_epochs": params.train.warmup_epochs,
            "recipe": params.sweep.recipe, "recipe_arm": params.sweep.recipe_arm, "warm_start": params.sweep.warm_start,
            "shared_space": {k: v.model_dump() for k, v in recipe_space(params).items()}}


def new_trials(budget: dict, n_warm: int) -> int:
    """Trials a study runs after its warm start: sweep.n_trials on top of `n_warm` committed trials; a study
    that starts cold (n_warm 0) runs at least sweep.cold_trials, every arm alike."""
    return budget["n_trials"] if n_warm else max(budget["n_trials"], budget["cold_trials"])


def importance_min_trials(searched: int) -> int:
    """Completed trials a study needs before its fANOVA importances mean something: ten per searched
    knob. With one knob driving the objective, fANOVA ranked it first in 15/20 (2 knobs) and 15/20
    (4 knobs) synthetic studies at five trials per knob, 20/20 at ten (benchmarks/importance_trials.py)."""
    return 10 * max(searched, 1)


def is_fixed(spec: SearchSpec) -> bool:
    return (isinstance(spec, RangeSpec) and spec.low == spec.high) or (isinstance(spec, ChoiceSpec) and len(spec.choices) == 1)
