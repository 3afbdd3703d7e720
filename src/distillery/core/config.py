"""The one validated schema for params.yaml.

Every knob the pipeline has is a field here; the defaults equal the shipped params.yaml.
Unknown keys and bad values raise ConfigError with one line per problem naming the key,
the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

DATA_SOURCES = ("digits", "mnist5k", "folder", "tf_flowers")
TF_FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    source: Literal["digits", "mnist5k", "folder", "tf_flowers"] = "digits"
    path: str | None = None
    url: str = TF_FLOWERS_URL
    image_size: int = Field(16, ge=4, le=1024)
    storage_size: int | None = Field(None, ge=4, le=2048)
    channels: Literal["auto", 1, 3] = "auto"
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    max_per_class: int | None = Field(None, ge=3)
    split_seed: int | None = 1204  # the train/val/test draw (null: `seed`); 1204: the declared confirmation split

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction + data.test_fraction = {self.val_fraction + self.test_fraction:g}"
                " leaves no training data; allowed: a sum below 1"
            )
        if self.storage_size is not None and self.storage_size < self.image_size:
            raise ValueError(f"data.storage_size={self.storage_size} is below data.image_size={self.image_size}; "
                             "allowed: null (store at image_size) or at least image_size")
        if self.source == "folder" and not self.path:
            raise ValueError("data.path is required when data.source is 'folder'; allowed: a directory with one sub-folder per class")
        return self


class AugmentConfig(_Section):
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    randaugment: str | None = None
    translate: int = Field(2, ge=0)
    hflip: bool = False
    mix_prob: float = Field(1.0, ge=0.0, le=1.0)
    random_erasing: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("rrc_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError(f"{list(v)} is not an area range; allowed: [low, high] with 0 < low <= high <= 1")
        return v

    @field_validator("rrc_ratio")
    @classmethod
    def _ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1]:
            raise ValueError(f"{list(v)} is not an aspect-ratio range; allowed: [low, high] with 0 < low <= high")
        return v

    @field_validator("randaugment")
    @classmethod
    def _randaugment_spec(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("rand-"):
            raise ValueError(f"'{v}' is not a timm RandAugment spec; allowed: null or e.g. 'rand-m9-mstd0.5-inc1'")
        return v


class TrainConfig(_Section):
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    optimizer: str = "adamw"
    warmup_epochs: int = Field(2, ge=0)
    min_lr: float = Field(1e-5, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(None, gt=0.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    device_cache: Literal["auto", "on", "off"] = "auto"
    device_cache_mb: float = Field(4096.0, ge=0.0)
    compile: bool = False
    fuse: Literal["auto", "off"] | int = "auto"

    def identity(self) -> dict[str, Any]:
        """What shapes a result: every field but where the training split is held (the same bytes either way)
        and how many runs train together (a fused run equals its run alone up to summation order)."""
        return {k: v for k, v in self.model_dump().items() if k not in ("device_cache", "device_cache_mb", "fuse")}

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse(cls, v: Any) -> Any:
        if v is False:  # YAML 1.1 (PyYAML) reads a bare off as false
            return "off"
        if v is True or (isinstance(v, int) and v < 1):
            raise ValueError("train.fuse must be auto, off or a whole number of runs >= 1")
        return v

    @field_validator("device_cache", mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare on/off as a boolean; DVC's YAML 1.2 reads it as a string
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class TeacherConfig(_Section):
    model: str = "distillery_cnn_small"
    pretrained: bool | str = False
    epochs: int = Field(15, ge=1)
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    mixing: float = Field(0.8, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)  # the teacher's own, apart from train.label_smoothing


class StudentConfig(_Section):
    model: str = "deit_tiny_distilled_patch16_224"
    baseline_model: str = "deit_tiny_patch16_224"
    patch_size: int = Field(4, ge=1)
    embed_dim: int = Field(64, ge=8)
    depth: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    # an int fixes the budget of every trial and final run; auto: the budget stage picks it on val (BudgetConfig)
    epochs: int | Literal["auto"] = Field(30)

    @field_validator("epochs", mode="before")
    @classmethod
    def _epochs(cls, v: Any) -> Any:
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"student.epochs={v!r} is invalid; allowed: an epoch count >= 1, or auto")
        return v

    @model_validator(mode="after")
    def _check(self) -> "StudentConfig":
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"student.embed_dim={self.embed_dim} is not divisible by student.num_heads={self.num_heads}; "
                "allowed: num_heads dividing embed_dim"
            )
        if "distilled" not in self.model:
            raise ValueError(
                f"student.model='{self.model}' is not a distilled variant; allowed: a timm name with "
                "'distilled' (e.g. deit_tiny_distilled_patch16_224), which has the distillation token"
            )
        if "distilled" in self.baseline_model:
            raise ValueError(
                f"student.baseline_model='{self.baseline_model}' has a distillation token; allowed: a plain "
                "ViT name (e.g. deit_tiny_patch16_224)"
            )
        return self


class RangeSpec(_Section):
    """A float searched in [low, high] (log scale if `log`); low == high fixes it."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> "RangeSpec":
        if self.low > self.high:
            raise ValueError(f"low={self.low:g} > high={self.high:g}; allowed: low <= high")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got low={self.low:g}")
        return self

    def bounds_within(self, lo: float, hi: float, what: str) -> "RangeSpec":
        if self.low < lo or self.high > hi:
            raise ValueError(f"{what} range [{self.low:g}, {self.high:g}] leaves [{lo:g}, {hi:g}]")
        return self


class ChoiceSpec(_Section):
    """A value searched among `choices` (one choice fixes it)."""

    choices: list[float] = Field(min_length=1)


SearchSpec = RangeSpec | ChoiceSpec


class BudgetConfig(_Section):
    """student.epochs: auto. The recipe arm trains at the centre of search.* for each rung in turn (a full
    warm-up + cosine schedule of that length, `seeds` seeds); the ladder stops at the first rung the next one
    beats by less than min_gain points of the val objective, and every arm trains at that rung."""

    rungs: list[int] = Field(default_factory=lambda: [30, 60, 120], min_length=2)
    seeds: int = Field(2, ge=1, le=16)
    min_gain: float = Field(1.0, ge=0.0)

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, v: list[int]) -> list[int]:
        if v[0] < 1 or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"{v}; allowed: epoch counts >= 1 in increasing order")
        return v


class SearchConfig(_Section):
    """The recipe knobs every arm searches, with the same ranges: equal tuning for every arm."""

    lr: RangeSpec = RangeSpec(low=1e-3, high=4e-3, log=True)
    weight_decay: RangeSpec = RangeSpec(low=0.01, high=0.1, log=True)
    mixing: ChoiceSpec = ChoiceSpec(choices=[0.0, 0.2, 0.8])
    drop_path: RangeSpec = RangeSpec(low=0.0, high=0.1)

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: RangeSpec) -> RangeSpec:
        if v.low <= 0:
            raise ValueError(f"lr range starts at {v.low:g}; allowed: lr > 0")
        return v

    @field_validator("weight_decay")
    @classmethod
    def _wd(cls, v: RangeSpec) -> RangeSpec:
        return v.bounds_within(0.0, float("inf"), "weight_decay")

    @field_validator("mixing")
    @classmethod
    def _mixing(cls, v: ChoiceSpec) -> ChoiceSpec:
        if any(c < 0 for c in v.choices):
            raise ValueError(f"mixing choices {v.choices} include a negative alpha; allowed: 0 (off) or alpha > 0")
        return v

    @field_validator("drop_path")
    @classmethod
    def _drop_path(cls, v: RangeSpec) -> RangeSpec:
        return v.bounds_within(0.0, 0.99, "drop_path")


class HardLossConfig(_Section):
    """Hard distillation: λ is searched in `alpha`; there is no temperature."""

    alpha: RangeSpec = RangeSpec(low=0.1, high=0.9)

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: RangeSpec) -> RangeSpec:
        return v.bounds_within(0.0, 1.0, "alpha")


class _LambdaTau(_Section):
    """A soft-distillation loss: λ and τ are searched in `alpha` and `tau`."""

    alpha: RangeSpec = RangeSpec(low=0.1, high=0.9)
    tau: RangeSpec = RangeSpec(low=1.0, high=8.0, log=True)

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: RangeSpec) -> RangeSpec:
        return v.bounds_within(0.0, 1.0, "alpha")

    @field_validator("tau")
    @classmethod
    def _tau_positive(cls, v: RangeSpec) -> RangeSpec:
        if v.low <= 0:
            raise ValueError(f"tau range starts at {v.low:g}; allowed: tau > 0")
        return v


class SoftLossConfig(_LambdaTau):
    """Soft distillation from the teacher."""

    kl_reduction: Literal["batchmean", "numel"] = "batchmean"


class FakeLossConfig(_LambdaTau):
    """Soft distillation from a fake teacher whose logits are the smoothed labels (the null of `soft`): the
    same loss, with distill.soft.kl_reduction, so soft − fake is what the teacher knows beyond the labels."""


class DistillConfig(_Section):
    soft: SoftLossConfig = SoftLossConfig()
    hard: HardLossConfig = HardLossConfig()
    fake: FakeLossConfig = FakeLossConfig()
    teacher: Literal["cached", "live"] = "cached"
    cache_dir: str | None = None
    cache_max_mb: float = Field(2048.0, ge=0.0)


class ArmsConfig(_Section):
    """Which arms run. Split by whether they distil (the fake teacher too), so that a teacher edit leaves the
    arms that never distil alone."""

    without_teacher: list[Literal["none", "control"]] = Field(default_factory=lambda: ["none", "control"])
    with_teacher: list[Literal["soft", "hard", "fake"]] = Field(default_factory=lambda: ["soft", "hard"])

    @model_validator(mode="after")
    def _check(self) -> "ArmsConfig":
        for key in ("without_teacher", "with_teacher"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"arms.{key}={values} repeats an arm; allowed: each arm once")
        if not self.with_teacher and not self.without_teacher:
            raise ValueError("arms.without_teacher and arms.with_teacher are both empty; allowed: at least one arm")
        if self.with_teacher and not self.without_teacher:
            raise ValueError("arms.without_teacher is empty: a distilled arm needs 'none' or 'control' to be compared "
                             "with; allowed: at least one of none, control")
        return self

    @property
    def all(self) -> list[str]:
        return [*self.without_teacher, *self.with_teacher]


class SweepConfig(_Section):
    def effective_pruner(self) -> str:
        """The pruner a study of n_trials really gets: `none` where the asked one would degenerate.

        Successive halving (and each Hyperband bracket) keeps the best 1/rf of the trials that reached a
        rung; below rf² trials fewer than rf reach the second, so a trial survives only by beating every
        earlier one on a noisy early score and the first trial can never be pruned: the pruner then
        decides by trial order, not by settings. The median pruner needs three finished trials past its
        start-up ones to have a median worth the name."""
        if self.pruner in ("successive_halving", "hyperband") and self.n_trials < self.reduction_factor ** 2:
            return "none"
        if self.pruner == "median" and self.n_trials < self.startup_trials + 3:
            return "none"
        return self.pruner

    n_trials: int = Field(2, ge=1)  # new trials after the warm start (sweep.warm_start)
    # trials of a study that starts cold (no committed trial ran under its conditions: new data, another
    # budget): a handful of trials would pick its winner by val noise. Fused, they cost far less than apart.
    cold_trials: int = Field(12, ge=1)
    storage: str | None = None
    workers: int = Field(1, ge=1)
    heartbeat_interval: int = Field(60, ge=1)
    grace_period: int | None = Field(None, ge=1)
    max_retry: int = Field(2, ge=0)
    pruner: Literal["successive_halving", "hyperband", "median", "none"] = "successive_halving"
    reduction_factor: int = Field(3, ge=2)
    prune_from_epoch: int = Field(12, ge=1)
    startup_trials: int = Field(2, ge=0)
    objective_epochs: int = Field(3, ge=1)
    # shared: recipe_arm's study tunes the recipe (search.*) and every arm trains at its winner, the
    # distilled arms tuning only their own knobs (DeiT's design: the comparison does not depend on which
    # arm's recipe search was luckier) | per_arm: every arm tunes the recipe for itself (best vs best)
    recipe: Literal["shared", "per_arm"] = "shared"
    recipe_arm: Literal["none", "control"] = "none"
    # A folder of <arm>.csv trials (a larger study's trials.csv) every study starts from, so each machine
    # tunes from the same ground; n_trials new trials follow. null: cold studies. Relative to the project.
    warm_start: str | None = "warm_start"

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql", "mysql", "sqlite:///")):
            raise ValueError(f"'{v}' is not a database URL; allowed: null (sweeps/<arm>/study.db) or e.g. "
                             "postgresql+psycopg://user:password@host:5432/optuna")
        return v


class FinalConfig(_Section):
    # The pilot: trained first by every arm, its val scores size the rest (seed_plan); then seeds up to max_seeds.
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1)
    max_seeds: int = Field(20, ge=1)
    # Seeds the two arms of report.primary run in all (the pilot included), declared before the run from
    # measured val variance (docs/seed-plan.md), within [len(seeds), max_seeds]; the plan may add more, up to
    # max_seeds. null: the plan alone.
    primary_seeds: int | None = Field(20, ge=2)
    # Which comparisons the plan may add seeds for: primary (the arms of report.primary) | all
    extend: Literal["primary", "all"] = "primary"
    # Processes per final run: > 1 launches the stage under torchrun (DDP, one GPU each, or gloo on CPU).
    # Here, not under train, so that changing it reruns only the final stages.
    nproc: int = Field(1, ge=1)

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"final.seeds={v} repeats a seed; allowed: distinct integers")
        return v

    @model_validator(mode="after")
    def _cap(self) -> "FinalConfig":
        if self.max_seeds < len(self.seeds):
            raise ValueError(f"final.max_seeds={self.max_seeds} is below the {len(self.seeds)} pilot seeds of "
                             "final.seeds; allowed: max_seeds >= len(final.seeds)")
        return self

    def extra_seeds(self, total: int) -> list[int]:
        """The seeds after the pilot, numbered on from its largest, up to `total` seeds in all."""
        start = max(self.seeds) + 1
        return list(range(start, start + max(0, min(total, self.max_seeds) - len(self.seeds))))


class EvaluateConfig(_Section):
    throughput_repeats: int = Field(5, ge=1)


# Every comparison the report can make, in its order: each distilled arm against each reference, then soft
# against its null (the same loss with the labels as the teacher). report.primary names one of them.
COMPARISONS = (("soft", "control"), ("soft", "none"), ("hard", "none"), ("hard", "control"), ("soft", "fake"))


class ReportConfig(_Section):
    dpi: int = Field(110, ge=30, le=600)
    # The one comparison that carries the answer, tested at the full alpha; the others are secondary, tested
    # (Holm) only if it passes (serial gatekeeping). null: every comparison in one Holm family.
    primary: str | None = "soft-control"
    title: str = "Does distillation help on this data?"
    min_effect: float = Field(1.0, ge=0.0)
    target_halfwidth: float = Field(1.0, gt=0.0)
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    weak_teacher_ratio: float = Field(0.75, gt=0.0, le=1.0)
    min_teacher_signal: float = Field(0.05, ge=0.0, le=1.0)

    @field_validator("primary")
    @classmethod
    def _primary(cls, v: str | None) -> str | None:
        names = [f"{a}-{r}" for a, r in COMPARISONS]
        if v is not None and v not in names:
            raise ValueError(f"report.primary={v!r} is not a comparison; allowed: {', '.join(names)}, or null")
        return v

    @property
    def primary_pair(self) -> tuple[str, str] | None:
        return tuple(self.primary.split("-")) if self.primary else None  # type: ignore[return-value]


class TrackingConfig(_Section):
    uri: str | None = None
    experiment: str = "distillery"
    # MLflow's system metrics (CPU, memory, and per GPU its utilisation and memory) on every run;
    # auto: on where a CUDA device is visible, where utilisation says whether the GPU is starved.
    system_metrics: Literal["auto"] | bool = "auto"
    system_metrics_interval: float = Field(2.0, gt=0)
    # evaluate logs every final model as an MLflow Model and registers each arm's pick by val
    log_models: bool = True


class Params(_Section):
    seed: int = 0
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    budget: BudgetConfig = BudgetConfig()
    arms: ArmsConfig = ArmsConfig()
    search: SearchConfig = SearchConfig()
    distill: DistillConfig = DistillConfig()
    sweep: SweepConfig = SweepConfig()
    final: FinalConfig = FinalConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _check(self) -> "Params":
        if self.data.image_size % self.student.patch_size:
            raise ValueError(
                f"data.image_size={self.data.image_size} is not divisible by student.patch_size="
                f"{self.student.patch_size}; allowed: a patch size that divides the image size"
            )
        mixing_possible = self.teacher.mixing > 0 or any(c > 0 for c in self.search.mixing.choices)
        if self.train.batch_size % 2 and mixing_possible and self.augment.mix_prob > 0:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} is odd, and Mixup/CutMix (search.mixing, teacher.mixing) "
                "pair images within a batch; allowed: an even batch size, or mixing 0 everywhere"
            )
        if self.augment.random_resized_crop and self.augment.translate > 0:
            raise ValueError(f"augment.random_resized_crop is on and augment.translate={self.augment.translate}: the crop "
                             "already moves the image; allowed: translate 0 with random_resized_crop")
        if self.seed in self.final.seeds or self.seed in self.final.extra_seeds(self.final.max_seeds):
            raise ValueError(
                f"seed={self.seed} is also in final.seeds={self.final.seeds} or the seeds after them, up to "
                f"final.max_seeds={self.final.max_seeds}: every sweep trial uses `seed`, so that "
                "final run would repeat the winning trial and hide the winner's curse; allowed: final seeds other "
                "than seed")
        shortest, which = self.shortest_budget
        if self.sweep.pruner != "none" and self.sweep.prune_from_epoch > shortest:
            raise ValueError(f"sweep.prune_from_epoch={self.sweep.prune_from_epoch} is after the last epoch "
                             f"({which}={shortest}), so nothing would be pruned; allowed: at most "
                             f"{which}, or sweep.pruner: none")
        if self.train.batch_size % self.final.nproc:
            raise ValueError(f"train.batch_size={self.train.batch_size} cannot be split evenly over final.nproc="
                             f"{self.final.nproc} processes; allowed: a batch size that is a multiple of final.nproc")
        if self.sweep.recipe_arm not in self.arms.without_teacher:
            raise ValueError(f"sweep.recipe_arm={self.sweep.recipe_arm} is not in arms.without_teacher="
                             f"{self.arms.without_teacher}; allowed: one of them (its sweep tunes the shared recipe, "
                             "and every final stage reads its sweeps/<arm>/best.json)")
        if (pair := self.report.primary_pair) and not set(pair) <= set(self.arms.all):
            missing = ", ".join(a for a in pair if a not in self.arms.all)
            raise ValueError(f"report.primary={self.report.primary} needs arm {missing}, which arms does not run; "
                             f"allowed: a comparison of {self.arms.all}, or report.primary: null")
        if self.sweep.objective_epochs > shortest:
            raise ValueError(f"sweep.objective_epochs={self.sweep.objective_epochs} exceeds {which}="
                             f"{shortest}; allowed: at most {which}")
        return self

    @property
    def shortest_budget(self) -> tuple[int, str]:
        """The fewest epochs a student may train, and the key that sets it (the first rung under auto)."""
        if self.student.epochs == "auto":
            return self.budget.rungs[0], "budget.rungs[0]"
        return self.student.epochs, "student.epochs"

    def at_epochs(self, epochs: int) -> "Params":
        """These params with the budget fixed at `epochs` (what `auto` resolves to once the budget stage ran)."""
        return self.model_copy(update={"student": self.student.model_copy(update={"epochs": epochs})})


def _schema_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_schema_keys(ann, prefix + name + "."))
    return keys


def _format_error(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        candidates = [k for k in _schema_keys(Params) if k.startswith(parent) and k.count(".") == key.count(".")]
        hint = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        allowed = ", ".join(sorted(c[len(parent):] for c in candidates))
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        name = key.rsplit(".", 1)[-1]
        # a trailing space or a pasted no-break space looks like the right key: escape it and say so
        blank = "" if name == name.strip() and name.isascii() and name.isprintable() else \
            ", which holds a blank or an invisible character"
        return f"unknown key '{ascii(key)[1:-1]}'{blank}{suggestion}; allowed here: {allowed}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" and (not key or msg.startswith(f"{key}=")):
        return msg  # model-level checks (and a few field checks) already name their keys
    if err["type"] == "value_error":
        return f"{key}: {msg}"
    value = err.get("input")
    return f"{key}={value!r} is invalid: {msg}"


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate a params mapping; raise ConfigError with one line per problem."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = [_format_error(e) for e in exc.errors()]
        raise ConfigError("invalid params.yaml: " + "; ".join(lines)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word: a hand edit that adds `path:` below an
    existing `path: null` would be silently undone. Refuse it instead, naming the key and its lines."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (lines {seen[key]} and {line}); keep one", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (a params file is YAML); check --params") from None
    if raw is None:  # DVC refuses it too (no `arms` for dvc.yaml): an emptied file, not a wish for defaults
        raise ConfigError(f"{path} is empty or only comments; allowed: the sections of the shipped params.yaml "
                          "(git checkout params.yaml restores it; make profile NAME=digits writes a whole recipe)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of sections (seed, data, train, ...), got a "
                          f"{type(raw).__name__}")
    return parse_params(raw)


def main(argv: list[str] | None = None) -> int:
    """`python -m distillery.core.config [params.yaml]`: the check `make repro` makes before DVC reads dvc.yaml,
    whose own message on a broken params file ("failed to parse 'stages.sweep.matrix'") names no key to fix."""
    path = (argv if argv is not None else sys.argv[1:]) or ["params.yaml"]
    try:
        load_params(path[0])
    except ConfigError as exc:
        print(f"distillery: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
