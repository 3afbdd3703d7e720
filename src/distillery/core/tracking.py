"""MLflow: where runs go, the tags every run carries, and the per-epoch logger callback."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .artifact_paths import artifact_root, relocate
from .config import Params, TrackingConfig
from .errors import TrackingError
from .processes import is_gone_here, this_process
from .paths import Layout

PROCESS_TAG = "host_pid"  # which process runs it: lets a later stage close the runs of a killed one
KIND_TAG = "mlflow.experimentKind"  # the UI's mode for the experiment (its values: mlflow/server/js)
MODEL_SHA_TAG = "model_sha256"  # on a final run: the SHA-256 of the model file it wrote, how evaluate finds it


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tracking_uri(cfg: TrackingConfig, layout: Layout) -> str:
    uri = cfg.uri or layout.default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # a relative sqlite path is relative to the project root, not to wherever DVC runs us
        rel = uri[len("sqlite:///"):]
        if not Path(rel).is_absolute():
            uri = f"sqlite:///{layout.home / rel}"
    return uri


def _check_reachable(uri: str) -> None:
    """Fail before training starts, naming the setting to change."""
    hint = "change tracking.uri in params.yaml (default: sqlite:///mlflow.db at the project root)"
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.parent.is_dir():
            raise TrackingError(f"MLflow database folder '{db.parent}' does not exist; {hint}")
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(f"MLflow database '{db}' is not writable; {hint}")
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
        except OSError as exc:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({exc}); {hint}") from None
    elif uri.startswith("file:") or "://" not in uri:
        raise TrackingError(f"tracking.uri='{uri}': MLflow 3 no longer supports the file store; {hint}")


def system_metrics_on(cfg: TrackingConfig) -> bool:
    if cfg.system_metrics == "auto":
        import torch

        return torch.cuda.is_available()
    return bool(cfg.system_metrics)


def system_metrics_interval(cfg: TrackingConfig) -> float | None:
    """The sampling interval of a training run's system metrics, or None when they are off."""
    return cfg.system_metrics_interval if system_metrics_on(cfg) else None


def setup_tracking(cfg: TrackingConfig, layout: Layout, monitor: bool = True) -> str:
    """Point MLflow at the configured store, creating the database once (under a lock). monitor=False:
    no system metrics, and no torch import to decide (the report stage, which trains nothing)."""
    import mlflow
    from filelock import FileLock

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    uri = tracking_uri(cfg, layout)
    _check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    if monitor and system_metrics_on(cfg):
        # MLflow's own monitor: a thread per active run samples psutil and (through pynvml) every GPU
        mlflow.set_system_metrics_sampling_interval(cfg.system_metrics_interval)
        mlflow.enable_system_metrics_logging()
    else:
        mlflow.disable_system_metrics_logging()
    lock = layout.home / ".mlflow.lock"
    own_db = _own_database(uri, layout)
    try:
        with FileLock(str(lock), timeout=600):
            if own_db is not None:  # a moved or copied project: its artifacts are in its own mlruns/
                relocate(own_db, layout.home)
            if own_db is not None and mlflow.get_experiment_by_name(cfg.experiment) is None:
                # under the project, not under the working directory of the first stage (a queued experiment's copy)
                slug = re.sub(r"[^\w.-]", "_", cfg.experiment)
                mlflow.create_experiment(cfg.experiment, artifact_location=str(artifact_root(layout.home) / slug))
            experiment = mlflow.set_experiment(cfg.experiment)
            if KIND_TAG not in experiment.tags:  # else the UI guesses, and opens a training project in GenAI mode
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, KIND_TAG, "custom_model_development")
        close_runs_of_gone_processes(experiment.experiment_id)
        fail_models_of_gone_processes(experiment.experiment_id)
    except Exception as exc:  # any store failure must end in one readable line
        raise TrackingError(f"could not open MLflow store {uri}: {type(exc).__name__}: {exc}"[:500]) from None
    return uri


def _own_database(uri: str, layout: Layout) -> Path | None:
    """The project's own SQLite store (its artifacts live in the project), or None: a server, a database elsewhere."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    return db if db.parent.resolve() == layout.home.resolve() else None


def close_runs_of_gone_processes(experiment_id: str) -> list[str]:
    """Mark KILLED the runs still RUNNING whose process, on this host, no longer exists: what a killed
    stage leaves behind (its trial, seed or sweep runs), which `mlflow ui` would otherwise show as
    running forever. A run of a live process, or of another host, is left alone."""
    import mlflow

    client = mlflow.MlflowClient()
    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        if is_gone_here(run.data.tags.get(PROCESS_TAG, "")):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    if closed:
        print(f"mlflow: {len(closed)} run(s) of a killed process marked KILLED")
    return closed


def fail_models_of_gone_processes(experiment_id: str) -> list[str]:
    """Mark FAILED the logged models a killed evaluate left PENDING (created, its files not all written):
    the run table would show them as models of the run, loading would fail. Their process is in PROCESS_TAG."""
    import mlflow
    from mlflow.entities import LoggedModelStatus

    client = mlflow.MlflowClient()
    failed = []
    newest = [{"field_name": "creation_timestamp", "ascending": False}]  # what a recent kill left is among them
    for model in client.search_logged_models([experiment_id], max_results=1000, order_by=newest):  # (a status filter finds none)
        if model.status == LoggedModelStatus.PENDING and is_gone_here(model.tags.get(PROCESS_TAG, "")):
            client.finalize_logged_model(model.model_id, "FAILED")
            failed.append(model.model_id)
    if failed:
        print(f"mlflow: {len(failed)} logged model(s) a killed process left pending marked FAILED")
    return failed


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def params_hash(params: Params) -> str:
    return hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:12]


def base_tags(layout: Layout, params: Params, stage: str, **extra: str) -> dict[str, str]:
    commit = git_commit(layout.root)
    tags = {"git_commit": commit, "dvc_stage": stage, "params_hash": params_hash(params),
            **{k: str(v) for k, v in extra.items()}, **source_tags(layout, commit)}
    if extra.get("model_kind") in DESCRIPTIONS:
        tags["mlflow.note.content"] = DESCRIPTIONS[extra["model_kind"]]
    if os.environ.get("DVC_EXP_NAME"):  # set by DVC for `dvc exp run`: find an experiment's runs in MLflow
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    return tags


def source_tags(layout: Layout, commit: str) -> dict[str, str]:
    """MLflow's Source and Created-by, which its client API (open_run) leaves empty: the stage script that made
    the run, its commit and the user."""
    import getpass

    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    try:
        name = str(script.relative_to(layout.root.resolve())) if script else "distillery"
    except ValueError:  # run from outside the project (a test, a notebook)
        name = script.name
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return {"mlflow.source.name": name, "mlflow.source.type": "LOCAL", "mlflow.source.git.commit": commit,
            "mlflow.user": user}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextmanager
def start_run(name: str, tags: dict[str, str], params: dict[str, Any] | None = None, nested: bool = False) -> Iterator[Any]:
    import mlflow

    with mlflow.start_run(run_name=name, tags={**tags, PROCESS_TAG: this_process()}, nested=nested) as run:
        if params:
            flat = {k: ("null" if v is None else v) for k, v in flatten(params).items()}
            items = list(flat.items())
            for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
                mlflow.log_params(dict(items[i:i + 100]))
        yield run


@contextmanager
def resume_run(run_id: str) -> Iterator[Any]:
    """Continue a killed run (MLflow sets it RUNNING again), now owned by this process."""
    import mlflow

    with mlflow.start_run(run_id=run_id) as run:
        mlflow.set_tag(PROCESS_TAG, this_process())  # or a later stage would take it for the killed one's
        yield run


class EpochLogger:
    """Training-loop callback: one MLflow metrics batch per epoch, step = epoch; to the active run, or to
    `run_id` (a fused group's members each log to their own run at once)."""

    def __init__(self, prefix: str = "", run_id: str | None = None):
        self.prefix = prefix
        self.run_id = run_id

    def __call__(self, record: dict[str, Any]) -> None:
        import mlflow

        step = int(record["epoch"])
        metrics = {self.prefix + k: float(v) for k, v in record.items() if k != "epoch"}
        if self.run_id is None:
            mlflow.log_metrics(metrics, step=step)
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        mlflow.MlflowClient().log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


def open_run(name: str, tags: dict[str, str], params: dict[str, Any] | None = None, *, nested_in: str | None = None,
             resume_id: str | None = None) -> str:
    """A run left open for a member of a fused group (several at once, which MLflow's active run cannot be):
    created in the active experiment, or `resume_id` set running again and owned by this process."""
    import mlflow
    from mlflow.entities import Param
    from mlflow.tracking.fluent import _get_experiment_id

    client = mlflow.MlflowClient()
    if resume_id:
        client.update_run(resume_id, status="RUNNING")
        client.set_tag(resume_id, PROCESS_TAG, this_process())
        return resume_id
    extra = {"mlflow.parentRunId": nested_in} if nested_in else {}
    run = client.create_run(_get_experiment_id(), run_name=name, tags={**tags, **extra, PROCESS_TAG: this_process()})
    items = [Param(k, str("null" if v is None else v)) for k, v in flatten(params or {}).items()]
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def repro_parent(layout: Layout, params: Params) -> str:
    """The run the final runs of one `dvc repro` nest under: one per commit, params version and DVC
    experiment. The first final stage creates it (finished at once: it trains nothing, and a kill must
    not leave it running); the later final and extra stages of the same repro find it by its key."""
    import mlflow
    from mlflow.tracking.fluent import _get_experiment_id

    client = mlflow.MlflowClient()
    key = f"{git_commit(layout.root)[:12]}-{params_hash(params)}-{os.environ.get('DVC_EXP_NAME', '')}"
    experiment = _get_experiment_id()
    found = client.search_runs([experiment], f"tags.repro_key = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {**base_tags(layout, params, "final", model_kind="repro"), "repro_key": key}
    run = client.create_run(experiment, run_name=f"repro-{params_hash(params)[:8]}", tags=tags)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


DESCRIPTIONS = {  # by the `model_kind` tag: the run's description (MLflow's note, on the run's page)
    "repro": "One dvc repro (one commit and params version): its final runs, every arm and seed, are the nested "
             "runs.",
    "teacher": "The teacher CNN, trained once on the train split; the distilled arms learn from it.",
    "budget": "One run of the budget ladder (student.epochs: auto): the recipe arm at the centre of the search "
              "ranges for one rung's whole schedule, scored on val; metrics/budget.json holds the chosen budget.",
    "sweep": "One arm's Optuna study on the val split: its trials are the nested runs; best.json holds the winner.",
    "sweep_trial": "One Optuna trial: the arm trained at the trial's settings for the full final budget, scored on "
                   "val.",
    "final": "One final seed of an arm at its study's winning settings; test metrics and its logged model come "
             "from the evaluate stage.",
    "summary": "The report of this dvc repro: every comparison's Δ, interval and verdict, and the final runs it "
               "summarises.",
}


def log_dataset_inputs(run_id: str, data: Any, splits: tuple[str, ...] = ("train", "val")) -> None:
    """The prepared splits a run trained and was scored on, as MLflow dataset inputs (the Dataset column):
    named `prepared/<split>`, the split as its context, digest Prepared.split_digests."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for split in splits:
        if split not in data.splits:
            continue
        part = data.splits[split]
        dataset = mlflow.data.from_numpy(part.x, targets=part.y, name=f"prepared/{split}",
                                         digest=data.split_digests[split])  # given: MLflow hashes nothing
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", split)]))
    mlflow.MlflowClient().log_inputs(run_id, inputs)


def close_run(run_id: str, error: BaseException | None = None) -> None:
    import mlflow

    status = "FINISHED" if error is None else ("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
    mlflow.MlflowClient().set_terminated(run_id, status=status)


@contextmanager
def system_metrics(run_id: str, cfg_on: bool, interval: float) -> Iterator[None]:
    """MLflow's system-metrics monitor (CPU, memory, GPU) on `run_id` while a block runs, when it is on."""
    if not cfg_on:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=True)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
