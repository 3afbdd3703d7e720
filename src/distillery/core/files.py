"""Reading and writing the pipeline's small files (JSON, CSV histories, best.json), without torch.

The report stage imports only this, the config and the statistics: it never loads a model.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed onto `path` only if the block finishes.

    A kill mid-write leaves the previous file (or none) and a stray temporary, never a truncated file
    that the next stage would trust. The name carries the pid: concurrent writers never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(f"{path} not found; run the stage that writes it first (dvc repro)")
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as exc:  # truncated, hand-edited or not JSON at all
        raise ConfigError(f"{path} is not readable JSON ({exc}); rerun the stage that writes it (dvc repro)") from None


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] = ()) -> None:
    """`columns` come first (and make the header of a file without rows); other keys follow."""
    keys: list[str] = list(columns)
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def read_history_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def objective_of(history: list[dict[str, Any]], last: int) -> float:
    """The sweep objective: mean val accuracy over the last `last` epochs (one epoch is too noisy)."""
    tail = [row["val_acc"] for row in history[-last:]]
    return sum(tail) / len(tail)


def planned_extra_seeds(seed_plan: Path, arms: list[str]) -> dict[str, list[int]]:
    """The seeds metrics/seed_plan.json adds to each arm after the pilot (none before the plan has run):
    the one reader every stage that needs an arm's full seed list goes through."""
    plan = read_json(seed_plan) if seed_plan.exists() else {}
    return {arm: [int(s) for s in plan.get("arms", {}).get(arm, {}).get("extra_seeds", [])] for arm in arms}


class Best(BaseModel):
    """sweeps/<arm>/best.json: the winning trial of an arm's study."""

    model_config = ConfigDict(extra="forbid")

    arm: str
    study_name: str
    trial: int | None  # None: the arm had nothing to search (it trains at recipe_from's recipe)
    objective: float | None  # mean val accuracy over the last sweep.objective_epochs epochs
    hparams: dict[str, float]
    n_trials: int
    n_complete: int
    n_pruned: int
    epochs: int
    recipe_from: str | None = None  # sweep.recipe: shared: the arm whose winning recipe this arm trains at
    n_warm: int = 0  # of n_trials, the committed trials the study was warm-started with (sweep.warm_start)

    def save(self, path: Path) -> None:
        write_json(path, self.model_dump())

    @classmethod
    def load(cls, path: Path) -> "Best":
        try:
            return cls.model_validate(read_json(path))
        except ValidationError as exc:
            raise ConfigError(f"{path} is not a best.json this version wrote ({exc.error_count()} problem(s)); "
                              "rerun its sweep stage") from None
