"""Warm-starting an arm's study from committed trials (sweep.warm_start), so every machine tunes from the
same settled ground.

A study of a few trials picks its winner by val noise: on another machine (other rounding, so other
models) it picks another recipe or λ/τ, and the quantity the report estimates moves with it. The
warm-start folder holds, per arm, the trials.csv of a larger study run once at the same budget; they
enter the new study as finished trials (Optuna's `add_trials`), with their values, before any new
trial is asked. The new trials (sweep.n_trials of them) are drawn by TPE from that history and replace
the winner only if one beats it on val. Only val scores are involved; test is never read.

Committed trials are used only where they were measured under this run's conditions: `<arm>.json`
beside each file records them (data digest, student, training recipe, augmentation, epochs, objective),
and any difference (another dataset, profile or epoch budget) starts the study cold, saying why. A trial
is taken only if its settings lie in the arm's current search space; a distilled arm's trials only if
they were run at the recipe the recipe arm's study chose here. The teacher is not compared: it is
retrained on each machine, so its bits differ, as the students' do.

Export a study as warm-start trials:  python -m distillery.tuning.warm_start none soft hard
(from the project root, after its sweeps ran: copies sweeps/<arm>/trials.csv and writes <arm>.json).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from ..core.config import ChoiceSpec, SearchSpec
from ..core.errors import ConfigError

STATES = {"COMPLETE": optuna.trial.TrialState.COMPLETE, "PRUNED": optuna.trial.TrialState.PRUNED}


def warm_file(root: Path, folder: str | None, arm: str) -> Path | None:
    """The arm's committed trials, or None (no warm start asked, or none committed for this arm)."""
    if folder is None:
        return None
    base = Path(folder) if Path(folder).is_absolute() else root / folder
    if not base.is_dir():
        raise ConfigError(f"sweep.warm_start={folder}: folder {base} not found; allowed: a folder of <arm>.csv "
                          "trial files, or null")
    path = base / f"{arm}.csv"
    return path if path.exists() else None


def data_digest(data) -> str:
    """The train and val images and labels, their classes and sizes: no float statistics, whose last bits
    may differ between machines."""
    h = hashlib.sha1(json.dumps([data.classes, data.image_size, data.storage_size]).encode())
    for split in ("train", "val"):
        h.update(np.ascontiguousarray(data.splits[split].x).tobytes())
        h.update(np.ascontiguousarray(data.splits[split].y).tobytes())
    return h.hexdigest()[:16]


def conditions(params, data, arm: str) -> dict:
    """What a committed trial's value depends on, apart from its settings and the teacher's bits."""
    return {"arm": arm, "data": data_digest(data), "epochs": params.student.epochs,
            "objective_epochs": params.sweep.objective_epochs, "student": params.student.model_dump(),
            "train": params.train.identity(), "augment": params.augment.model_dump(),
            "kl_reduction": params.distill.soft.kl_reduction if arm in ("soft", "fake") else None,
            "seed": params.seed}


def conditions_mismatch(path: Path, here: dict) -> str | None:
    meta = path.with_suffix(".json")
    if not meta.exists():
        return f"{meta.name} (the conditions its trials ran under) is missing"
    there = json.loads(meta.read_text())
    diff = [k for k in here if json.dumps(there.get(k), sort_keys=True) != json.dumps(here[k], sort_keys=True)]
    return f"its trials ran under other {', '.join(diff)}" if diff else None


def digest(path: Path | None) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path is not None else None


def read_trials(path: Path, space: dict[str, SearchSpec]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a trials CSV ({type(exc).__name__}); allowed: a sweeps/<arm>/trials.csv") \
            from None
    missing = [c for c in ("state", "value", "epochs_run", *space) if c not in df.columns]
    if missing:
        raise ConfigError(f"{path} lacks column(s) {', '.join(missing)}; allowed: a trials.csv of a study over "
                          f"{', '.join(space)}")
    return df[df["state"].isin(list(STATES))]


def _in_space(value: float, spec: SearchSpec) -> bool:
    if isinstance(spec, ChoiceSpec):
        return any(math.isclose(value, c, rel_tol=1e-6, abs_tol=1e-12) for c in spec.choices)
    return spec.low * (1 - 1e-6) - 1e-12 <= value <= spec.high * (1 + 1e-6) + 1e-12


def _distribution(spec: SearchSpec) -> optuna.distributions.BaseDistribution | None:
    """What `studies.suggest` would record for this knob; None for a fixed one (kept as a user attr only)."""
    if isinstance(spec, ChoiceSpec):
        return optuna.distributions.CategoricalDistribution(spec.choices) if len(spec.choices) > 1 else None
    if spec.low == spec.high:
        return None
    return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log)


def _value_for(spec: SearchSpec, value: float) -> float:
    """The space's own value (a choice exactly as listed, a range value clipped into it)."""
    if isinstance(spec, ChoiceSpec):
        return next(c for c in spec.choices if math.isclose(value, c, rel_tol=1e-6, abs_tol=1e-12))
    return min(max(value, spec.low), spec.high)


def frozen_trials(df: pd.DataFrame, space: dict[str, SearchSpec], epochs: int) -> list[optuna.trial.FrozenTrial]:
    """The rows whose settings lie in `space`, as finished trials carrying the user attrs this project reads
    (hp_<knob>, slot, epochs_run, last_val_acc); no intermediate values, so no pruner
    ranks a new trial against epochs it cannot see."""
    out = []
    for slot, row in enumerate(r for _, r in df.iterrows() if all(_in_space(float(r[k]), s) for k, s in space.items())):
        hp = {k: _value_for(s, float(row[k])) for k, s in space.items()}
        dists = {k: d for k, s in space.items() if (d := _distribution(s)) is not None}
        ran = int(min(max(int(row["epochs_run"]), 1), epochs))
        last = float(row["last_val_acc"]) if "last_val_acc" in row and pd.notna(row["last_val_acc"]) else 0.0
        state = STATES[row["state"]]
        out.append(optuna.trial.create_trial(
            state=state, value=float(row["value"]) if state == optuna.trial.TrialState.COMPLETE else None,
            params={k: hp[k] for k in dists}, distributions=dists,
            user_attrs={"slot": slot, "warm_start": True, "epochs_run": ran, "last_val_acc": last,
                        **{f"hp_{k}": v for k, v in hp.items()},
                        **({"prune_reason": str(row["prune_reason"])} if state.name == "PRUNED"
                           and "prune_reason" in row and pd.notna(row["prune_reason"]) else {})}))
    return out


def recipe_mismatch(df: pd.DataFrame, recipe: dict[str, float] | None) -> str | None:
    """Why a distilled arm's committed trials were not run at this recipe, or None when they were."""
    if recipe is None or df.empty:
        return None
    for k, v in recipe.items():
        if k in df.columns and not all(math.isclose(float(x), v, rel_tol=1e-5, abs_tol=1e-12) for x in df[k]):
            return f"its trials ran at {k}={float(df[k].iloc[0]):.6g}, the shared recipe here has {k}={v:.6g}"
    return None


def warm_start(study: optuna.Study, path: Path | None, space: dict[str, SearchSpec], epochs: int,
               recipe: dict[str, float] | None, here: dict | None = None) -> tuple[int, str]:
    """Add the committed trials to a study that has none yet; (trials in the study from the warm start, a
    line saying what happened). A study that already holds trials (a resumed sweep) is left as it is."""
    if path is None:
        return 0, "no warm start"
    held = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("warm_start")]
    if held or study.get_trials(deepcopy=False):
        return len(held), f"{len(held)} warm-start trials (resumed study)"
    if here is not None and (why := conditions_mismatch(path, here)):
        return 0, f"cold start: {path} not used ({why})"
    df = read_trials(path, space)
    if why := recipe_mismatch(df, recipe):
        return 0, f"cold start: {path.name} not used ({why})"
    trials = frozen_trials(df, space, epochs)
    study.add_trials(trials)
    left = len(df) - len(trials)
    return len(trials), (f"{len(trials)} warm-start trials from {path}" + (f" ({left} outside the search space left out)"
                                                                            if left else ""))


def export(arms: list[str]) -> None:
    """Copy each arm's sweeps/<arm>/trials.csv into sweep.warm_start's folder with its conditions."""
    from ..core.config import load_params
    from ..core.paths import Layout
    from ..data import load_prepared

    layout = Layout.from_env()
    params = load_params(layout.params)
    folder = Path(params.sweep.warm_start or "warm_start")
    folder = folder if folder.is_absolute() else layout.root / folder
    folder.mkdir(parents=True, exist_ok=True)
    data = load_prepared(layout.prepared)
    for arm in arms:
        src = layout.sweep_dir(arm) / "trials.csv"
        if not src.exists():
            raise ConfigError(f"{src} not found; run its sweep first (dvc repro)")
        shutil.copyfile(src, folder / f"{arm}.csv")
        (folder / f"{arm}.json").write_text(json.dumps(conditions(params, data, arm), indent=2, sort_keys=True)
                                             + "\n")
        print(f"{folder / (arm + '.csv')}: {sum(1 for _ in open(src)) - 1} trials")


if __name__ == "__main__":
    export(sys.argv[1:])
