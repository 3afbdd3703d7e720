"""Where every stage reads and writes, anchored on DVC_ROOT when DVC sets it.

Queued `dvc exp run` executes in a temporary copy of the repository; anchoring on DVC_ROOT
keeps every path (the MLflow database included) inside the copy DVC is running.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def project_root(start: Path | None = None) -> Path:
    env = os.environ.get("DVC_ROOT")
    if env:
        return Path(env).resolve()
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

    @property
    def home(self) -> Path:
        """The user's project folder, even inside a queued `dvc exp` workspace.

        DVC runs queued experiments in <project>/.dvc/tmp/exps/<tmp>/; their MLflow runs belong in
        the project's database, not in a copy that is deleted afterwards.
        """
        parts = self.root.parts
        for i in range(len(parts) - 3):
            if parts[i:i + 3] == (".dvc", "tmp", "exps"):
                return Path(*parts[:i])
        return self.root

    def default_tracking_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"
