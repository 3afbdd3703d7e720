"""Where MLflow writes, and clear errors when it cannot."""

import pytest

from distillery.core.config import TrackingConfig
from distillery.core.errors import TrackingError
from distillery.core.paths import Layout, project_root
from distillery.core.tracking import _check_reachable, flatten, tracking_uri


def test_default_database_is_at_the_project_root(tmp_path):
    assert tracking_uri(TrackingConfig(), Layout(tmp_path)) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_relative_sqlite_uri_is_anchored_on_the_project(tmp_path):
    assert tracking_uri(TrackingConfig(uri="sqlite:///runs/x.db"), Layout(tmp_path)) == f"sqlite:///{tmp_path / 'runs/x.db'}"


def test_queued_experiment_logs_into_the_projects_database(monkeypatch, tmp_path):
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # what DVC sets for a queued experiment
    layout = Layout(workspace)
    assert layout.home == tmp_path.resolve() and layout.prepared == workspace / "data" / "prepared"
    assert tracking_uri(TrackingConfig(), layout) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_outputs_follow_the_workspace_not_dvc_root(monkeypatch, tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("DVC_ROOT", "/somewhere/else")
    assert project_root(tmp_path / "ws") == (tmp_path / "ws").resolve()


@pytest.mark.parametrize("uri, expected", [
    ("http://127.0.0.1:9", "unreachable"),
    ("sqlite:////nonexistent-dir/x/mlflow.db", "does not exist"),
    ("file:///tmp/mlruns", "file store"),
])
def test_unusable_tracking_uri_names_the_setting(uri, expected):
    with pytest.raises(TrackingError) as info:
        _check_reachable(uri)
    assert expected in str(info.value) and "tracking.uri" in str(info.value)


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_system_metrics_are_sampled_into_each_run_when_on(tmp_path):
    """MLflow's own monitor, switched on by tracking.system_metrics: a run that lasts a few samples has them."""
    import time

    import mlflow

    from distillery.core.tracking import setup_tracking, start_run, system_metrics_on

    assert system_metrics_on(TrackingConfig(system_metrics=False)) is False
    cfg = TrackingConfig(system_metrics=True, system_metrics_interval=0.5)
    try:
        setup_tracking(cfg, Layout(tmp_path))
        with start_run("busy", {}) as run:
            time.sleep(2.0)
        keys = set(mlflow.get_run(run.info.run_id).data.metrics)
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys, keys
        setup_tracking(TrackingConfig(system_metrics=False), Layout(tmp_path))
        with start_run("quiet", {}) as run:
            time.sleep(1.0)
        assert not any(k.startswith("system/") for k in mlflow.get_run(run.info.run_id).data.metrics)
    finally:
        mlflow.disable_system_metrics_logging()


@pytest.mark.slow
def test_runs_of_a_killed_process_are_marked_killed_and_no_others(tmp_path):
    """A stage killed mid-run leaves its MLflow run RUNNING; the next stage on this host closes it as
    KILLED, but not a run of a live process nor one from another host; a resumed run is this process's."""
    import subprocess
    import sys

    import mlflow

    from distillery.core.processes import this_process
    from distillery.core.tracking import PROCESS_TAG, resume_run, setup_tracking

    victim = subprocess.run([sys.executable, "-c", (
        "import os, pathlib; from distillery.core.config import TrackingConfig; from distillery.core.paths import Layout\n"
        "from distillery.core.tracking import setup_tracking, start_run\n"
        f"setup_tracking(TrackingConfig(system_metrics=False), Layout(pathlib.Path({str(tmp_path)!r})))\n"
        "with start_run('victim', {}) as run:\n"
        "    print(run.info.run_id, flush=True); os._exit(0)  # dies inside the run, as under SIGKILL")],
        capture_output=True, text=True, timeout=120)
    killed_id = victim.stdout.split()[-1]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(killed_id).info.status == "RUNNING"  # what the kill left
    experiment = client.get_run(killed_id).info.experiment_id
    alive = client.create_run(experiment, tags={PROCESS_TAG: this_process()}).info.run_id
    remote = client.create_run(experiment, tags={PROCESS_TAG: "another-host:12345"}).info.run_id
    setup_tracking(TrackingConfig(system_metrics=False), Layout(tmp_path))  # what the next stage does first
    status = {rid: client.get_run(rid).info.status for rid in (killed_id, alive, remote)}
    assert status == {killed_id: "KILLED", alive: "RUNNING", remote: "RUNNING"}
    with resume_run(killed_id):  # the resumed training's run: running again, and this process's now
        assert client.get_run(killed_id).info.status == "RUNNING"
        assert client.get_run(killed_id).data.tags[PROCESS_TAG] == this_process()
    assert client.get_run(killed_id).info.status == "FINISHED"
    for rid in (alive, remote):
        client.set_terminated(rid)


def test_the_final_stages_of_one_repro_share_one_finished_parent_run(tmp_path, monkeypatch):
    import mlflow

    from distillery.core.config import parse_params
    from distillery.core.tracking import repro_parent, setup_tracking

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    layout = Layout(tmp_path)
    setup_tracking(TrackingConfig(system_metrics=False), layout)
    p = parse_params({})
    first = repro_parent(layout, p)
    assert repro_parent(layout, p) == first  # the next final stage of the same repro finds it
    run = mlflow.MlflowClient().get_run(first)
    assert run.info.status == "FINISHED" and run.data.tags["model_kind"] == "repro"
    assert run.data.tags["mlflow.note.content"]
    assert repro_parent(layout, parse_params({"student": {"depth": 3}})) != first  # other params: another repro
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    assert repro_parent(layout, p) != first  # a DVC experiment groups its own runs


def test_a_moved_project_keeps_its_artifacts_and_a_copy_writes_its_own(tmp_path):
    """MLflow stores absolute artifact paths: after a move, setup_tracking points the project's store at its own
    mlruns/ (runs, logged models, experiments), so the artifacts still list and load, and new ones land there."""
    import shutil

    import mlflow

    from distillery.core.artifact_paths import experiment_links, foreign_roots
    from distillery.core.tracking import setup_tracking, start_run

    first, moved = tmp_path / "first", tmp_path / "moved"
    first.mkdir()
    cfg = TrackingConfig(system_metrics=False)
    try:
        setup_tracking(cfg, Layout(first))
        with start_run("r", {}) as run:
            mlflow.log_text("hello", "notes/a.txt")
        model = mlflow.initialize_logged_model(name="m", source_run_id=run.info.run_id)
        assert mlflow.get_run(run.info.run_id).info.artifact_uri.startswith(str(first / "mlruns"))
        shutil.copytree(first, moved)
        shutil.rmtree(first)
        setup_tracking(cfg, Layout(moved))
        client = mlflow.MlflowClient()
        assert client.get_run(run.info.run_id).info.artifact_uri.startswith(str(moved / "mlruns"))
        assert [f.path for f in client.list_artifacts(run.info.run_id, "notes")] == ["notes/a.txt"]
        assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes/a.txt") == "hello"
        assert client.get_logged_model(model.model_id).artifact_location.startswith(str(moved / "mlruns"))
        assert foreign_roots(moved / "mlflow.db", moved) == []
        experiment = mlflow.get_experiment_by_name(cfg.experiment).experiment_id
        assert experiment_links(moved / "mlflow.db") == [
            f"{cfg.experiment}: http://127.0.0.1:5000/#/experiments/{experiment}/runs?workflowType=machine_learning"]
        with start_run("after the move", {}) as again:
            mlflow.log_text("new", "b.txt")
        assert (moved / "mlruns").is_dir() and not first.exists()
        assert client.get_run(again.info.run_id).info.artifact_uri.startswith(str(moved / "mlruns"))
    finally:
        mlflow.set_tracking_uri(None)


def test_a_database_outside_the_project_is_not_rewritten(tmp_path):
    """A store the project does not own (elsewhere on disk, or a server) keeps its locations."""
    from distillery.core.artifact_paths import relocate

    project = tmp_path / "p"
    (project / "mlruns").mkdir(parents=True)
    import sqlite3

    db = tmp_path / "shared.db"
    with sqlite3.connect(db) as con:
        con.execute("create table experiments (artifact_location text)")
        con.execute("insert into experiments values ('/elsewhere/mlruns/1')")
    from distillery.core.tracking import _own_database

    assert _own_database(f"sqlite:///{db}", Layout(project)) is None
    assert _own_database(f"sqlite:///{project / 'mlflow.db'}", Layout(project)) == project / "mlflow.db"
    assert relocate(project / "mlflow.db", project) == 0  # no store there: nothing to do


def test_a_logged_model_a_killed_process_left_pending_is_marked_failed(tmp_path):
    """evaluate creates a logged model, writes its files, then marks it READY: a kill in between leaves it
    PENDING. The next stage marks it FAILED, and leaves a live process's and another host's alone."""
    import socket
    import subprocess

    import mlflow

    from distillery.core.processes import this_process
    from distillery.core.tracking import PROCESS_TAG, setup_tracking

    cfg = TrackingConfig(system_metrics=False)
    finished = subprocess.Popen(["true"])  # a process of this host that no longer exists
    finished.wait()
    try:
        experiment = setup_tracking(cfg, Layout(tmp_path)) and mlflow.get_experiment_by_name(cfg.experiment)
        client = mlflow.MlflowClient()
        made = {who: client.create_logged_model(experiment.experiment_id, name=who, tags={PROCESS_TAG: label}).model_id
                for who, label in (("killed", f"{socket.gethostname()}:{finished.pid}"),
                                   ("alive", this_process()), ("remote", "another-host:12345"))}
        done = client.create_logged_model(experiment.experiment_id, name="done",
                                          tags={PROCESS_TAG: f"{socket.gethostname()}:{finished.pid}"})
        client.finalize_logged_model(done.model_id, "READY")
        setup_tracking(cfg, Layout(tmp_path))  # what the next stage does first
        status = {who: str(client.get_logged_model(mid).status) for who, mid in made.items()}
        assert status == {"killed": "FAILED", "alive": "PENDING", "remote": "PENDING"}
        assert str(client.get_logged_model(done.model_id).status) == "READY"
    finally:
        mlflow.set_tracking_uri(None)
