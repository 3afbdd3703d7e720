"""The four arms of the comparison, and the search each one gets.

`none` is the plain ViT. `control` is the distilled architecture trained without a teacher (its
distillation token learns the true labels: DeiT's "two class tokens" control), so that soft/hard
vs control isolates the teacher's signal from the extra token and the averaged heads. `soft` and
`hard` are DeiT's two distillation losses. Everything that differs between arms is in this file;
the rest of the code asks an `Arm` instead of testing names.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ChoiceSpec, Params, RangeSpec, SearchSpec


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    two_heads: bool  # the distilled architecture (class + distillation token)
    uses_teacher: bool

    def stage(self, group: str) -> str:
        """The DVC stage name of this arm in `group` ("sweep" or "final"): teacher arms live in `<group>_kd`."""
        return f"{group}_kd@{self.name}" if self.uses_teacher else f"{group}@{self.name}"


ARMS: dict[str, Arm] = {
    "none": Arm("none", "plain ViT", two_heads=False, uses_teacher=False),
    "control": Arm("control", "DeiT architecture, no teacher", two_heads=True, uses_teacher=False),
    "soft": Arm("soft", "DeiT, soft distillation", two_heads=True, uses_teacher=True),
    "hard": Arm("hard", "DeiT, hard distillation", two_heads=True, uses_teacher=True),
}
REFERENCES = ("none", "control")  # what a distilled arm is compared against
DISTILLED = ("soft", "hard")
# The control's two heads share the loss equally: 0.5 is the paper's hard-distillation weighting,
# so control and hard differ only in where the second token's target comes from.
CONTROL_ALPHA = 0.5


def get_arm(name: str) -> Arm:
    if name not in ARMS:
        raise ValueError(f"unknown arm '{name}'; allowed: {', '.join(ARMS)}")
    return ARMS[name]


def search_space(params: Params, arm: str) -> dict[str, SearchSpec]:
    """The shared recipe knobs (identical for every arm), then the arm's own loss knobs."""
    space: dict[str, SearchSpec] = {k: getattr(params.search, k) for k in type(params.search).model_fields}
    if arm == "soft":
        space |= {"alpha": params.distill.soft.alpha, "tau": params.distill.soft.tau}
    elif arm == "hard":
        space |= {"alpha": params.distill.hard.alpha}
    return space


def study_budget(params: Params, arm: str) -> dict:
    """What the arm's study may spend: the sweep stage opens the study from this, and a test checks
    it is the same for every arm."""
    shared_keys = type(params.search).model_fields
    shared = {k: v.model_dump() for k, v in search_space(params, arm).items() if k in shared_keys}
    return {"n_trials": params.sweep.n_trials, "epochs_per_trial": params.student.epochs,
            "pruner": params.sweep.effective_pruner(), "reduction_factor": params.sweep.reduction_factor,
            "prune_from_epoch": params.sweep.prune_from_epoch,
            "startup_trials": params.sweep.startup_trials, "sampler_seed": params.seed,
            "objective_epochs": params.sweep.objective_epochs, "warmup_epochs": params.train.warmup_epochs,
            "shared_space": shared}


def is_fixed(spec: SearchSpec) -> bool:
    return (isinstance(spec, RangeSpec) and spec.low == spec.high) or (isinstance(spec, ChoiceSpec) and len(spec.choices) == 1)
