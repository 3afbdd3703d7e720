"""A tracked training run: train, checkpoint, save the model and its history, log to MLflow.

Shared by the teacher and final stages so that every kept model is trained, saved and logged the
same way (sweep trials log through the same EpochLogger but keep no model).

A finished run is also kept under checkpoints/finished/<run>/: DVC deletes a stage's outputs
before rerunning it, so without this a stage killed during seed 3 (or while DVC stores the
outputs of a stage that has finished) would retrain seeds 1 and 2 from scratch. A rerun with the
same fingerprint and the same code restores the model, history and MLflow run id from there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import torch.nn as nn

from ..core.files import atomic_path, write_csv, write_json, write_text
from ..data import Prepared
from ..recipe.models import ModelSpec, count_params, save_model, state_digest
from ..core.tracking import (MODEL_SHA_TAG, EpochLogger, close_run, file_sha256, log_dataset_inputs, open_run,
                             system_metrics)
from .checkpoints import checkpoint_fingerprint, previous_of
from .loop import Member, fit
from ..recipe.run_recipe import Recipe
from .distributed import Ranks
from .teacher_cache import TeacherCache


@dataclass
class TrainedModel:
    net: nn.Module
    history: list[dict[str, Any]]
    run_id: str


@dataclass
class Unit:
    """One tracked run of a group: what tracked_fit trains, saves and logs."""

    name: str
    net: nn.Module
    spec: ModelSpec
    recipe: Recipe
    tags: dict[str, str]
    log_params: dict[str, Any]
    model_path: Path
    history_path: Path
    checkpoint: Path


def tracked_fit(units: list[Unit], data: Prepared, *, teacher: nn.Module | None = None,
                teacher_cache: TeacherCache | None = None, desc: str | None = None,
                system_metrics_interval: float | None = None, ranks: Ranks | None = None) -> list[TrainedModel]:
    """Train a group of runs (fused when there are several), each in its own MLflow run, checkpoint,
    finished record, model and history, exactly as if trained alone; resume the training and the runs
    after a kill. With `system_metrics_interval`, MLflow's system metrics of the shared device go to the
    group's first run. Under torchrun (a group of one) every rank trains; only rank 0 logs, saves and
    cleans up (the others return run_id "")."""
    ranks = ranks or Ranks.from_env()
    teacher_digest = state_digest(teacher) if teacher is not None else None
    data_digest = data.fingerprint()  # hashes every training and val image: once, not once per unit
    extras = [run_identity(u.spec, data_digest, teacher_digest) for u in units]
    prints = [u.recipe.fingerprint(e) for u, e in zip(units, extras)]
    results = {i: done for i, u in enumerate(units) if (done := _restore_finished(u, prints[i], ranks)) is not None}
    todo = [i for i in range(len(units)) if i not in results]
    if not todo:  # every run finished before the stage was interrupted
        return [results[i] for i in range(len(units))]
    run_ids = _open_runs([units[i] for i in todo], [prints[i] for i in todo], data) if ranks.main else [""] * len(todo)
    members = [Member(units[i].net, units[i].recipe, units[i].name, units[i].checkpoint,
                      [EpochLogger(run_id=run_id)] if run_id else [], extras[i]) for i, run_id in zip(todo, run_ids)]
    try:
        with system_metrics(run_ids[0], bool(ranks.main and system_metrics_interval), system_metrics_interval or 0):
            fit(members, data, teacher=teacher, teacher_cache=teacher_cache, ranks=ranks, desc=desc or units[0].name)
        for m in members:
            m.result()
    except BaseException as exc:
        for run_id in run_ids if ranks.main else ():
            close_run(run_id, exc)
        raise
    for i, m, run_id in zip(todo, members, run_ids):
        if ranks.main:
            _save_outputs(units[i], m.history, run_id)
            close_run(run_id)
            _keep_finished(units[i], prints[i], run_id, m.history)
        results[i] = TrainedModel(m.net, m.history, run_id)
    return [results[i] for i in range(len(units))]


def _open_runs(units: list[Unit], prints: list[str], data: Prepared) -> list[str]:
    """Each unit's MLflow run: the interrupted one continued when its training resumes, else a new one
    with its dataset inputs. Its id is kept beside the checkpoint, for the resume after a kill."""
    run_ids = []
    for u, fingerprint in zip(units, prints):
        resumed = _resumable_run(u, fingerprint)
        run_id = open_run(u.name, u.tags, {**u.log_params, "num_params": count_params(u.net)}, resume_id=resumed)
        if not resumed:  # a resumed run has its inputs already
            log_dataset_inputs(run_id, data)
        write_text(u.checkpoint.with_suffix(".mlflow_run"), run_id)
        run_ids.append(run_id)
    return run_ids


def _restore_finished(unit: Unit, fingerprint: str, ranks: Ranks) -> TrainedModel | None:
    """The run's kept model and history when it finished before the stage was interrupted, else None."""
    done = _finished(unit.checkpoint, fingerprint)
    if done is None:
        return None
    if ranks.main:  # the only writer; other ranks just skip the run
        for kept, out in (("model.pt", unit.model_path), ("history.csv", unit.history_path)):  # the very bytes
            with atomic_path(out) as tmp:
                shutil.copyfile(finished_dir(unit.checkpoint) / kept, tmp)
        print(f"{unit.name}: finished before the stage was interrupted; restored from {finished_dir(unit.checkpoint)}")
    unit.net.load_state_dict(torch.load(finished_dir(unit.checkpoint) / "model.pt", map_location="cpu",
                                        weights_only=True)["state_dict"])
    return TrainedModel(unit.net, done["history"], done["run_id"] if ranks.main else "")


def _resumable_run(unit: Unit, fingerprint: str) -> str | None:
    """The interrupted MLflow run to continue: only when the loop will continue the interrupted training."""
    run_file = unit.checkpoint.with_suffix(".mlflow_run")
    resumable = checkpoint_fingerprint(unit.checkpoint) == fingerprint
    return run_file.read_text().strip() if (resumable and run_file.exists()) else None


def _save_outputs(unit: Unit, history: list[dict[str, Any]], run_id: str) -> None:
    import mlflow

    save_model(unit.model_path, unit.net, unit.spec, {"history": history})
    write_csv(unit.history_path, history)
    client = mlflow.MlflowClient()
    final = {f"final_{k}": v for k, v in history[-1].items() if k.startswith("val_")}
    for k, v in final.items():
        client.log_metric(run_id, k, float(v))
    client.log_artifact(run_id, str(unit.history_path), artifact_path="history")
    client.set_tag(run_id, MODEL_SHA_TAG, file_sha256(unit.model_path))
    # the raw checkpoint; evaluate adds the loadable MLflow Model (publish.py)
    client.log_artifact(run_id, str(unit.model_path), artifact_path="checkpoint")


def _keep_finished(unit: Unit, fingerprint: str, run_id: str, history: list[dict[str, Any]]) -> None:
    keep = finished_dir(unit.checkpoint)
    for out, kept in ((unit.model_path, "model.pt"), (unit.history_path, "history.csv")):
        with atomic_path(keep / kept) as tmp:
            shutil.copyfile(out, tmp)
    # written last: its presence says the unit is whole
    write_json(keep / "record.json", {"fingerprint": fingerprint, "code": code_digest(), "run_id": run_id,
                                      "history": history})
    unit.checkpoint.unlink(missing_ok=True)  # finished: a later run with new code must not resume from it
    previous_of(unit.checkpoint).unlink(missing_ok=True)
    unit.checkpoint.with_suffix(".mlflow_run").unlink(missing_ok=True)


def run_identity(spec: ModelSpec, data_fingerprint: str, teacher_digest: str | None) -> dict[str, Any]:
    """What besides the recipe makes a run's checkpoint its own (fit's `fingerprint_extra`): the model,
    the data and the teacher. Taking the digests as arguments lets a sweep hash its data and teacher once."""
    return {"model": spec.name, "kwargs": spec.kwargs, "data": data_fingerprint, "teacher": teacher_digest}


def finished_dir(checkpoint: Path) -> Path:
    return checkpoint.parent / "finished" / checkpoint.stem


def _finished(checkpoint: Path, fingerprint: str) -> dict[str, Any] | None:
    """The kept record of this very run (same fingerprint) if it finished earlier, else None."""
    record = finished_dir(checkpoint) / "record.json"
    try:
        done = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if (done.get("fingerprint"), done.get("code")) != (fingerprint, code_digest()) \
            or not all((finished_dir(checkpoint) / kept).exists() for kept in ("model.pt", "history.csv")):
        return None
    return done


def code_digest() -> str:
    """The package's and the running stage script's source: a model trained by other code is not reused."""
    h = hashlib.sha256()
    files = sorted(Path(__file__).resolve().parents[1].rglob("*.py"))
    script = Path(sys.argv[0]).resolve()
    for path in [*files, *([script] if script.suffix == ".py" and script.is_file() else [])]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
