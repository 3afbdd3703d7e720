"""Where MLflow writes, and clear errors when it cannot."""

from pathlib import Path

import pytest

from distillery.config import TrackingConfig
from distillery.errors import TrackingError
from distillery.paths import Layout, project_root
from distillery.tracking import _check_reachable, flatten, tracking_uri


def test_default_database_is_at_the_project_root(tmp_path):
    assert tracking_uri(TrackingConfig(), Layout(tmp_path)) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_relative_sqlite_uri_is_anchored_on_the_project(tmp_path):
    assert tracking_uri(TrackingConfig(uri="sqlite:///runs/x.db"), Layout(tmp_path)) == f"sqlite:///{tmp_path / 'runs/x.db'}"


def test_queued_experiment_logs_into_the_projects_database(tmp_path):
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    assert Layout(workspace).home == tmp_path
    assert tracking_uri(TrackingConfig(), Layout(workspace)) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_dvc_root_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert project_root(Path("/")) == tmp_path.resolve()


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
