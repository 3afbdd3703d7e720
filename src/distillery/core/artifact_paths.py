"""A moved or copied project keeps its MLflow artifacts: models, histories, figures.

MLflow stores every artifact location as an absolute path and has no relative one (mlflow/mlflow#3144),
so a clone moved elsewhere with its `mlflow.db` and `mlruns/` would list its runs without their models
and figures, and a copy would write its new artifacts into the original's folder. The project's own
SQLite store therefore keeps its artifacts in `<project>/mlruns/`, and when the store names another
`…/mlruns` (the project was moved or copied) every stage's setup_tracking, and `make ui`, rewrites the
stored prefix to the project's own folder. A tracking server, or a database elsewhere, is left alone:
its artifacts are the server's.

    python -m distillery.core.artifact_paths [project]   # rewrite, then print what changed
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

# every column of MLflow 3's SQLite schema that holds an artifact location
COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"),
           ("model_versions", "storage_location"))
FOLDER = "mlruns"


def artifact_root(home: Path) -> Path:
    """Where the project's own store keeps artifacts (a new experiment's location is under it)."""
    return home / FOLDER


def _plain(location: str) -> str:
    return location[len("file://"):] if location.startswith("file://") else location


def foreign_roots(db: Path, home: Path) -> list[str]:
    """The `…/mlruns` folders the store's experiments name other than the project's own."""
    own = str(artifact_root(home))
    with sqlite3.connect(db) as con:
        if not con.execute("select 1 from sqlite_master where type='table' and name='experiments'").fetchone():
            return []
        locations = [_plain(row[0] or "") for row in con.execute("select artifact_location from experiments")]
    roots = {loc[:loc.rindex(f"/{FOLDER}/") + len(FOLDER) + 1] for loc in locations if f"/{FOLDER}/" in loc}
    return sorted(r for r in roots if r != own)


def relocate(db: Path, home: Path) -> int:
    """Point every artifact location under another `…/mlruns` at `<home>/mlruns`; the number of rows changed.
    Nothing happens unless the store is a file and the project has its own artifact folder."""
    new = artifact_root(home)
    if not db.is_file() or not new.is_dir():
        return 0
    changed = 0
    with sqlite3.connect(db) as con:
        tables = {row[0] for row in con.execute("select name from sqlite_master where type='table'")}
        for old in foreign_roots(db, home):
            for table, column in COLUMNS:
                if table not in tables:
                    continue
                for scheme in ("", "file://"):
                    prefix, target = f"{scheme}{old}/", f"{scheme}{new}/"
                    changed += con.execute(
                        f"update {table} set {column} = ? || substr({column}, ?) where substr({column}, 1, ?) = ?",
                        (target, len(prefix) + 1, len(prefix), prefix)).rowcount
    return changed


def experiment_links(db: Path, base: str = "http://127.0.0.1:5000") -> list[str]:
    """Each experiment's run table in model-training mode: MLflow 3's UI opens in GenAI mode unless the
    link says otherwise (its mode is a browser setting, not the experiment's)."""
    with sqlite3.connect(db) as con:
        rows = con.execute("select experiment_id, name from experiments where lifecycle_stage = 'active' "
                           "and name != 'Default' order by experiment_id").fetchall()
    return [f"{name}: {base}/#/experiments/{eid}/runs?workflowType=machine_learning" for eid, name in rows]


def main(argv: list[str]) -> int:
    home = Path(argv[0] if argv else ".").resolve()
    db = home / "mlflow.db"
    if not db.is_file():
        print(f"{db} not found: run the pipeline first (make repro)")
        return 1
    roots = foreign_roots(db, home)
    n = relocate(db, home)
    print(f"mlflow.db: {n} artifact location(s) moved from {', '.join(roots)} to {artifact_root(home)}" if n
          else f"mlflow.db: every artifact location is under {artifact_root(home)}")
    print("open (model-training mode):", *experiment_links(db), sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
