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
from .tracking import EpochLogger, resume_run, start_run
from .loop import EpochCallback, Recipe, checkpoint_fingerprint, fit
from .distributed import Ranks
from .teacher_cache import TeacherCache


@dataclass
class TrainedModel:
    net: nn.Module
    history: list[dict[str, Any]]
    run_id: str


def tracked_fit(*, name: str, net: nn.Module, spec: ModelSpec, data: Prepared, recipe: Recipe, tags: dict[str, str],
                log_params: dict[str, Any], model_path: Path, history_path: Path, checkpoint: Path,
                teacher: nn.Module | None = None, extra_callbacks: list[EpochCallback] = (),
                teacher_cache: TeacherCache | None = None, ranks: Ranks | None = None) -> TrainedModel:
    """Train one model inside its own MLflow run; resume both the training and the run after a kill.

    Under torchrun every rank trains; only rank 0 logs, saves and cleans up (the others return run_id "")."""
    import mlflow

    ranks = ranks or Ranks.from_env()
    run_file = checkpoint.with_suffix(".mlflow_run")
    fingerprint_extra = run_identity(spec, data.fingerprint(), state_digest(teacher) if teacher is not None else None)
    fingerprint = recipe.fingerprint(fingerprint_extra)
    done = _finished(checkpoint, fingerprint)
    if done is not None:
        history = done["history"]
        if ranks.main:  # the only writer; other ranks just skip the run
            for kept, out in (("model.pt", model_path), ("history.csv", history_path)):  # the very bytes
                with atomic_path(out) as tmp:
                    shutil.copyfile(finished_dir(checkpoint) / kept, tmp)
            print(f"{name}: finished before the stage was interrupted; restored from {finished_dir(checkpoint)}")
        net.load_state_dict(torch.load(finished_dir(checkpoint) / "model.pt", map_location="cpu",
                                       weights_only=True)["state_dict"])
        return TrainedModel(net, history, done["run_id"] if ranks.main else "")
    if not ranks.main:
        history = fit(net, data, recipe, teacher=teacher, checkpoint=checkpoint, desc=name,
                      fingerprint_extra=fingerprint_extra, teacher_cache=teacher_cache, ranks=ranks)
        return TrainedModel(net, history, "")
    # Continue the interrupted MLflow run only when fit() will continue the interrupted training.
    resumable = checkpoint_fingerprint(checkpoint) == fingerprint
    resume_id = run_file.read_text().strip() if (resumable and run_file.exists()) else None
    if resume_id:
        ctx = resume_run(resume_id)
    else:
        ctx = start_run(name, tags, {**log_params, "num_params": count_params(net)})
    with ctx as run:
        write_text(run_file, run.info.run_id)
        history = fit(net, data, recipe, teacher=teacher, callbacks=[EpochLogger(), *extra_callbacks],
                      checkpoint=checkpoint, desc=name, fingerprint_extra=fingerprint_extra,
                      teacher_cache=teacher_cache, ranks=ranks)
        save_model(model_path, net, spec, {"history": history})
        write_csv(history_path, history)
        final = {f"final_{k}": v for k, v in history[-1].items() if k.startswith("val_")}
        mlflow.log_metrics(final)
        mlflow.log_artifact(str(history_path), artifact_path="history")
        mlflow.log_artifact(str(model_path), artifact_path="model")
    keep = finished_dir(checkpoint)
    for out, kept in ((model_path, "model.pt"), (history_path, "history.csv")):
        with atomic_path(keep / kept) as tmp:
            shutil.copyfile(out, tmp)
    # written last: its presence says the unit is whole
    write_json(keep / "record.json", {"fingerprint": fingerprint, "code": code_digest(), "run_id": run.info.run_id,
                                      "history": history})
    checkpoint.unlink(missing_ok=True)  # finished: a later run with new code must not resume from it
    run_file.unlink(missing_ok=True)
    return TrainedModel(net, history, run.info.run_id)


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
