"""The arms of the comparison, and the search each one gets.

`none` is the plain ViT. `control` is the distilled architecture trained without a teacher (its
distillation token learns the true labels: DeiT's "two class tokens" control), so that soft/hard
vs control isolates the teacher's signal from the extra token and the averaged heads. `soft` and
`hard` are DeiT's two distillation losses. `fake` is soft distillation from a fake teacher whose
logits are the smoothed labels, so soft − fake is what the teacher knows beyond the labels and not
the shape of the loss (a τ-softened second target regularises on its own; reports/exploration.md). Everything that differs between arms is in this file;
the rest of the code asks an `Arm` instead of testing names.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import COMPARISONS, ChoiceSpec, Params, RangeSpec, SearchSpec
from .errors import ConfigError
from .files import Best
from .paths import Layout


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    two_heads: bool  # the distilled architecture (class + distillation token)
    uses_teacher: bool  # reads models/teacher.pt
    distils: bool = False  # a distillation loss (the fake teacher's too): its study tunes λ/τ at the shared recipe

    def stage(self, group: str) -> str:
        """The DVC stage name of this arm in `group` ("sweep" or "final"): distilling arms live in `<group>_kd`."""
        return f"{group}_kd@{self.name}" if self.distils else f"{group}@{self.name}"


ARMS: dict[str, Arm] = {
    "none": Arm("none", "plain ViT", two_heads=False, uses_teacher=False),
    "control": Arm("control", "DeiT architecture, no teacher", two_heads=True, uses_teacher=False),
    "soft": Arm("soft", "DeiT, soft distillation", two_heads=True, uses_teacher=True, distils=True),
    "hard": Arm("hard", "DeiT, hard distillation", two_heads=True, uses_teacher=True, distils=True),
    "fake": Arm("fake", "DeiT, soft distillation from a fake teacher (the smoothed labels)", two_heads=True,
                uses_teacher=False, distils=True),
}
REFERENCES = ("none", "control")  # what a distilled arm is compared against
DISTILLED = ("soft", "hard")
# COMPARISONS (imported above) lives in config: report.primary is validated against it.
# The control's two heads share the loss equally: 0.5 is the paper's hard-distillation weighting,
# so control and hard differ only in where the second token's target comes from.
CONTROL_ALPHA = 0.5


def get_arm(name: str) -> Arm:
    if name not in ARMS:
        raise ValueError(f"unknown arm '{name}'; allowed: {', '.join(ARMS)}")
    return ARMS[name]


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


def load_best(layout: Layout, params: Params, arm: str) -> Best:
    """The arm's winning configuration, complete: under the shared recipe, the recipe knobs are the
    recipe arm's winners, and the arm's own study must have been run at exactly those."""
    best = Best.load(layout.best(arm))
    if not shares_recipe(params, arm):
        return best
    owner = params.sweep.recipe_arm
    recipe = Best.load(layout.best(owner))
    shared = {k: recipe.hparams[k] for k in recipe_space(params)}
    tuned_at = {k: best.hparams[k] for k in shared if k in best.hparams}
    if best.recipe_from != owner or (tuned_at and tuned_at != shared):
        raise ConfigError(f"{layout.best(arm)} was not tuned at the shared recipe of {layout.best(owner)} "
                          f"(sweep.recipe: shared); rerun its sweep (dvc repro {ARMS[arm].stage('sweep')})")
    return best.model_copy(update={"hparams": {**shared, **best.hparams}})


def is_fixed(spec: SearchSpec) -> bool:
    return (isinstance(spec, RangeSpec) and spec.low == spec.high) or (isinstance(spec, ChoiceSpec) and len(spec.choices) == 1)
