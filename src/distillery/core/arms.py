"""The arms of the comparison, and the search each one gets.

`none` is the plain ViT. `control` is the distilled architecture trained without a teacher (its
distillation token learns the true labels: DeiT's "two class tokens" control), so that soft/hard
vs control isolates the teacher's signal from the extra token and the averaged heads. `soft` and
`hard` are DeiT's two distillation losses. `fake` is soft distillation from a fake teacher whose
logits are the smoothed labels, so soft − fake is what the teacher knows beyond the labels and not
the shape of the loss (a τ-softened second target regularises on its own; reports/exploration.md). Everything that differs between arms is in this file;
the rest of the code asks an `Arm` instead of testing names. What each arm's study searches,
and with which budget: search_spaces.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import COMPARISONS, Params
from .errors import ConfigError
from .files import Best
from .paths import Layout
from .search_spaces import recipe_space, shares_recipe


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


