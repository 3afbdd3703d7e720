"""The engines a group runs, for real, on loopback: PostgreSQL 15 for Optuna's studies and for an
`mlflow server` backend store with a served artifact destination."""

import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import copy_project, project_env, run_ok
from engines import mlflow_server, postgres_missing, postgres_server

pytestmark = [pytest.mark.slow, pytest.mark.engine,
              pytest.mark.skipif(postgres_missing() is not None, reason=str(postgres_missing()))]

CAP = 5


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """(Optuna storage URL, MLflow tracking URI, artifact folder): one PostgreSQL server holds both."""
    tmp = tmp_path_factory.mktemp("engines")
    with postgres_server(("optuna", "mlflow")) as pg:
        with mlflow_server(pg + "mlflow", tmp / "artifacts", tmp / "mlflow-server.log") as uri:
            yield pg + "optuna", uri, tmp / "artifacts"


def runs_on(uri, **filters):
    import mlflow

    mlflow.set_tracking_uri(uri)
    where = " and ".join(f"tags.{k} = '{v}'" for k, v in filters.items())
    return mlflow.search_runs(experiment_names=["distillery"], filter_string=where)


def worker(project, arm):
    path = project / f"worker-{time.time_ns()}.log"
    with open(path, "w") as log:
        proc = subprocess.Popen([sys.executable, "pipeline/sweep.py", "--arm", arm, "--worker"], cwd=project,
                                env=project_env(), stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = path
    return proc


def test_two_workers_on_postgres_one_killed_mid_trial(engines, tmp_path):
    postgres, tracking, artifacts = engines
    project = copy_project(tmp_path / "proj", {
        "student.epochs": 8, "sweep.n_trials": CAP, "sweep.cold_trials": 1, "sweep.pruner": "none", "sweep.startup_trials": 1,
        "sweep.storage": postgres, "sweep.heartbeat_interval": 1, "sweep.grace_period": 2, "final.seeds": [1],
        "tracking.uri": tracking})
    run_ok([sys.executable, "pipeline/prepare.py"], project)
    first, second = worker(project, "none"), worker(project, "none")
    storage = optuna.storages.RDBStorage(postgres)

    def running_trial_of(proc):
        for name in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
            study = optuna.load_study(study_name=name, storage=storage)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if t.user_attrs.get("worker", "").endswith(f":{proc.pid}") and len(t.intermediate_values) >= 2:
                    return study, t
        return None, None

    deadline = time.time() + 300
    study = victim = None
    while time.time() < deadline and victim is None:
        study, victim = running_trial_of(first)
        time.sleep(0.3)
    assert victim is not None, first.log_path.read_text()[-2000:]
    first.send_signal(signal.SIGKILL)  # mid-trial, after at least two reported epochs
    first.wait()
    assert second.wait(timeout=600) == 0, second.log_path.read_text()[-3000:]
    log = run_ok([sys.executable, "pipeline/sweep.py", "--arm", "none"], project)  # the stage: summarise only

    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    assert by_number[victim.number].state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, [(t.number, t.state, t.system_attrs) for t in trials]
    retry = retries[0]
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.params == victim.params  # the same settings, tried again
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert CAP <= len(finished) <= CAP + 1  # two workers: at most one over (README, Scaling out)
    assert "best trial" in log

    runs = runs_on(tracking, model_kind="sweep_trial", params_hash=_hash(project))
    logged = {int(n) for n in runs["tags.trial_number"]}
    assert {t.number for t in finished} <= logged  # every finished trial has its MLflow run, on the server
    assert not (project / "mlflow.db").exists()  # nothing went to the local default

    run_ok([sys.executable, "pipeline/final.py", "--arm", "none"], project)  # a final run's artifacts: to the server
    import mlflow

    final = runs_on(tracking, dvc_stage="final@none", params_hash=_hash(project))
    assert len(final) == 1
    listed = {a.path for a in mlflow.MlflowClient(tracking).list_artifacts(final["run_id"][0], "checkpoint")}
    assert listed == {"checkpoint/seed_1.pt"} and (artifacts / "").exists()
    snapshot = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{project / 'sweeps/none/study.db'}")
    assert len(snapshot.trials) == len(trials)  # DVC's output: a local copy of the shared study


def _hash(project):
    from distillery.core.config import load_params
    from distillery.core.tracking import params_hash

    return params_hash(load_params(project / "params.yaml"))


LOGGER = """
import sys, pathlib
from distillery.core.config import TrackingConfig
from distillery.core.paths import Layout
from distillery.core.tracking import setup_tracking, start_run
import mlflow
setup_tracking(TrackingConfig(uri=sys.argv[1]), Layout(pathlib.Path(sys.argv[2])))
for i in range(3):
    with start_run(f"worker{sys.argv[3]}-run{i}", {"engine_test": sys.argv[3]}, {"i": i}):
        path = pathlib.Path(sys.argv[2]) / f"w{sys.argv[3]}-{i}.txt"
        path.write_text(f"worker {sys.argv[3]} run {i}")
        mlflow.log_metric("value", i)
        mlflow.log_artifact(str(path), artifact_path="notes")
"""


def test_concurrent_processes_log_runs_and_artifacts_to_one_server(engines, tmp_path):
    _, tracking, _ = engines
    (tmp_path / "params.yaml").write_text("{}")
    procs = [subprocess.Popen([sys.executable, "-c", LOGGER, tracking, str(tmp_path), str(w)], env=project_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for w in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    import mlflow

    client = mlflow.MlflowClient(tracking)
    runs = runs_on(tracking)
    mine = runs[runs["tags.engine_test"].notna()] if "tags.engine_test" in runs else runs.iloc[0:0]
    assert len(mine) == 9 and set(mine["tags.mlflow.runName"]) == {f"worker{w}-run{i}" for w in range(3) for i in range(3)}
    for run_id, name in zip(mine["run_id"], mine["tags.mlflow.runName"]):
        (artifact,) = client.list_artifacts(run_id, "notes")
        local = client.download_artifacts(run_id, artifact.path, str(tmp_path / run_id))
        w, i = name[len("worker"):].split("-run")
        assert open(local).read() == f"worker {w} run {i}"
