"""A tracked training run: train, checkpoint, save the model and its history, log to MLflow.

Shared by the teacher and final stages so that every kept model is trained, saved and logged the
same way (sweep trials log through the same EpochLogger but keep no model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..core.files import write_csv, write_text
from ..data import Prepared
from .models import ModelSpec, count_params, save_model, state_digest
from .tracking import EpochLogger, start_run
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
    fingerprint_extra = {"model": spec.name, "kwargs": spec.kwargs, "data": data.fingerprint(),
                         "teacher": state_digest(teacher) if teacher is not None else None}
    if not ranks.main:
        history = fit(net, data, recipe, teacher=teacher, checkpoint=checkpoint, desc=name,
                      fingerprint_extra=fingerprint_extra, teacher_cache=teacher_cache, ranks=ranks)
        return TrainedModel(net, history, "")
    # Continue the interrupted MLflow run only when fit() will continue the interrupted training.
    resumable = checkpoint_fingerprint(checkpoint) == recipe.fingerprint(fingerprint_extra)
    resume_id = run_file.read_text().strip() if (resumable and run_file.exists()) else None
    if resume_id:
        ctx = mlflow.start_run(run_id=resume_id)
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
    checkpoint.unlink(missing_ok=True)  # finished: a later run with new code must not resume from it
    run_file.unlink(missing_ok=True)
    return TrainedModel(net, history, run.info.run_id)
