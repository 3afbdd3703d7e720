"""Where every stage reads and writes.

Data, models and metrics live in the workspace DVC is running (the folder holding dvc.yaml,
found from the working directory). The MLflow database lives at DVC_ROOT when DVC sets it:
for a queued `dvc exp run`, DVC runs the stages in a temporary copy under .dvc/tmp/exps/ and
points DVC_ROOT at the user's project, so every experiment's runs land in one database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def project_root(start: Path | None = None) -> Path:
    """The workspace: the nearest folder upwards holding dvc.yaml or params.yaml."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists() or (candidate / "params.yaml").exists():
            return candidate
    return here


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def from_env(cls) -> "Layout":
        return cls(project_root())

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def history(self) -> Path:
        return self.root / "metrics" / "history"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def sweeps(self) -> Path:
        return self.root / "sweeps"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    # ------------------------------------------------ per-arm and per-stage files
    @property
    def teacher_model(self) -> Path:
        return self.models / "teacher.pt"

    @property
    def budget(self) -> Path:
        """The epoch budget every arm trains at (the budget stage)."""
        return self.metrics / "budget.json"

    @property
    def budget_runs(self) -> Path:
        """The budget ladder's models and learning curves."""
        return self.sweeps / "budget"

    def sweep_dir(self, arm: str) -> Path:
        return self.sweeps / arm

    def best(self, arm: str) -> Path:
        return self.sweeps / arm / "best.json"

    # The planned seeds after the pilot (stage extra@<arm>) live beside the pilot's, under extra/: each
    # folder is one stage's output, and DVC outputs cannot overlap.
    def model(self, arm: str, seed: int, extra: bool = False) -> Path:
        return self.models / ("extra" if extra else "") / arm / f"seed_{seed}.pt"

    def history_file(self, arm: str, seed: int, extra: bool = False) -> Path:
        return self.history / ("extra" if extra else "") / arm / f"seed_{seed}.csv"

    def val_predictions(self, arm: str) -> Path:
        """The pilot seeds' val predictions: what the seed plan is computed from."""
        return self.metrics / "val_predictions" / f"{arm}.csv"

    @property
    def seed_plan(self) -> Path:
        return self.metrics / "seed_plan.json"

    def arm_seed_plan(self, arm: str) -> Path:
        """The seeds seed_plan adds to one arm: what extra@<arm> depends on."""
        return self.metrics / "seed_plan" / f"{arm}.json"

    def checkpoint(self, run: str) -> Path:
        return self.checkpoints / f"{run}.pt"

    def final_metrics(self, arm: str, extra: bool = False) -> Path:
        return self.metrics / "final" / ("extra" if extra else "") / f"{arm}.json"

    @property
    def home(self) -> Path:
        """The user's project: DVC_ROOT when DVC sets it (the parent repo of a queued experiment)."""
        env = os.environ.get("DVC_ROOT")
        return Path(env).resolve() if env else self.root

    def default_tracking_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"
