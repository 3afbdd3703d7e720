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
from .models import ModelSpec, count_params, save_model, state_digest
from ..core.tracking import (MODEL_SHA_TAG, EpochLogger, close_run, file_sha256, log_dataset_inputs, open_run,
                             resume_run, start_run, system_metrics)
from .checkpoints import checkpoint_fingerprint, previous_of
from .loop import EpochCallback, Member, Recipe, fit, fit_group
from .distributed import Ranks
from .teacher_cache import TeacherCache


@dataclass
class TrainedModel:
    net: nn.Module
    history: list[dict[str, Any]]
    run_id: str


@dataclass
class Unit:
    """One tracked run of a group: what tracked_fit_group trains, saves and logs."""

    name: str
    net: nn.Module
    spec: ModelSpec
    recipe: Recipe
    tags: dict[str, str]
    log_params: dict[str, Any]
    model_path: Path
    history_path: Path
    checkpoint: Path


def tracked_fit(*, name: str, net: nn.Module, spec: ModelSpec, data: Prepared, recipe: Recipe, tags: dict[str, str],
                log_params: dict[str, Any], model_path: Path, history_path: Path, checkpoint: Path,
                teacher: nn.Module | None = None, extra_callbacks: list[EpochCallback] = (),
                teacher_cache: TeacherCache | None = None, ranks: Ranks | None = None) -> TrainedModel:
    """Train one model inside its own MLflow run; resume both the training and the run after a kill.

    Under torchrun every rank trains; only rank 0 logs, saves and cleans up (the others return run_id "")."""
    ranks = ranks or Ranks.from_env()
    unit = Unit(name, net, spec, recipe, tags, log_params, model_path, history_path, checkpoint)
    fingerprint_extra = run_identity(spec, data.fingerprint(), state_digest(teacher) if teacher is not None else None)
    done = _restore_finished(unit, recipe.fingerprint(fingerprint_extra), ranks)
    if done is not None:
        return done
    if not ranks.main:
        history = fit(net, data, recipe, teacher=teacher, checkpoint=checkpoint, desc=name,
                      fingerprint_extra=fingerprint_extra, teacher_cache=teacher_cache, ranks=ranks)
        return TrainedModel(net, history, "")
    resume_id = _resumable_run(unit, recipe.fingerprint(fingerprint_extra))
    ctx = resume_run(resume_id) if resume_id else start_run(name, tags, {**log_params, "num_params": count_params(net)})
    with ctx as run:
        write_text(checkpoint.with_suffix(".mlflow_run"), run.info.run_id)
        if not resume_id:  # a resumed run has its inputs already
            log_dataset_inputs(run.info.run_id, data)
        history = fit(net, data, recipe, teacher=teacher, callbacks=[EpochLogger(), *extra_callbacks],
                      checkpoint=checkpoint, desc=name, fingerprint_extra=fingerprint_extra,
                      teacher_cache=teacher_cache, ranks=ranks)
        _save_outputs(unit, history, run.info.run_id)
    _keep_finished(unit, recipe.fingerprint(fingerprint_extra), run.info.run_id, history)
    return TrainedModel(net, history, run.info.run_id)


def tracked_fit_group(units: list[Unit], data: Prepared, *, teacher: nn.Module | None = None,
                      teacher_cache: TeacherCache | None = None, desc: str = "train",
                      system_metrics_interval: float | None = None) -> list[TrainedModel]:
    """tracked_fit for several runs trained fused (one process, no DDP): each keeps its own MLflow run,
    checkpoint, finished record, model and history, exactly as if trained alone. With
    `system_metrics_interval`, MLflow's system metrics of the shared device go to the group's first run."""
    ranks = Ranks(0, 1, 0)
    teacher_digest = state_digest(teacher) if teacher is not None else None
    extras = [run_identity(u.spec, data.fingerprint(), teacher_digest) for u in units]
    prints = [u.recipe.fingerprint(e) for u, e in zip(units, extras)]
    results: dict[int, TrainedModel] = {}
    for i, u in enumerate(units):
        done = _restore_finished(u, prints[i], ranks)
        if done is not None:
            results[i] = done
    todo = [i for i in range(len(units)) if i not in results]
    if not todo:  # every run finished before the stage was interrupted
        return [results[i] for i in range(len(units))]
    resumed = {i: _resumable_run(units[i], prints[i]) for i in todo}
    run_ids = {i: open_run(units[i].name, units[i].tags,
                           {**units[i].log_params, "num_params": count_params(units[i].net)},
                           resume_id=resumed[i]) for i in todo}
    for i in todo:
        if not resumed[i]:  # a resumed run has its inputs already
            log_dataset_inputs(run_ids[i], data)
    members = []
    for i in todo:
        write_text(units[i].checkpoint.with_suffix(".mlflow_run"), run_ids[i])
        members.append(Member(units[i].net, units[i].recipe, units[i].name, units[i].checkpoint,
                              [EpochLogger(run_id=run_ids[i])], extras[i]))
    try:
        with system_metrics(run_ids[todo[0]] if todo else "", bool(todo and system_metrics_interval),
                            system_metrics_interval or 0):
            fit_group(members, data, teacher=teacher, teacher_cache=teacher_cache, ranks=ranks, desc=desc)
    except BaseException as exc:
        for i in todo:
            close_run(run_ids[i], exc)
        raise
    for i, m in zip(todo, members):
        if m.outcome is not None:
            for j in todo:
                close_run(run_ids[j], m.outcome)
            raise m.outcome
    for i, m in zip(todo, members):
        _save_outputs(units[i], m.history, run_ids[i])
        close_run(run_ids[i])
        _keep_finished(units[i], prints[i], run_ids[i], m.history)
        results[i] = TrainedModel(m.net, m.history, run_ids[i])
    return [results[i] for i in range(len(units))]


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
    """The interrupted MLflow run to continue: only when fit() will continue the interrupted training."""
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
