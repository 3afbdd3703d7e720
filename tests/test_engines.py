"""Sweeps on a real PostgreSQL server (loopback only): shared study, heartbeats, retries, the cap."""

import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import copy_project, project_env, run_ok
from engines import postgres_missing, postgres_server

pytestmark = [pytest.mark.slow, pytest.mark.engine,
              pytest.mark.skipif(postgres_missing() is not None, reason=str(postgres_missing()))]

CAP = 5


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


def worker(project, arm):
    path = project / f"worker-{time.time_ns()}.log"
    with open(path, "w") as log:
        proc = subprocess.Popen([sys.executable, "pipeline/sweep.py", "--arm", arm, "--worker"], cwd=project,
                                env=project_env(), stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = path
    return proc


def test_two_workers_on_postgres_one_killed_mid_trial(postgres, tmp_path):
    project = copy_project(tmp_path / "proj", {
        "student.epochs": 8, "sweep.n_trials": CAP, "sweep.pruner": "none", "sweep.startup_trials": 1,
        "sweep.storage": postgres, "sweep.heartbeat_interval": 1, "sweep.grace_period": 2, "final.seeds": [1]})
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

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["distillery"], filter_string="tags.model_kind = 'sweep_trial'")
    logged = {int(n) for n in runs["tags.trial_number"]}
    assert {t.number for t in finished} <= logged  # every finished trial has its MLflow run
    snapshot = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{project / 'sweeps/none/study.db'}")
    assert len(snapshot.trials) == len(trials)  # DVC's output: a local copy of the shared study
