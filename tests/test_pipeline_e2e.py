"""The real `dvc repro` on a tiny configuration, in a temporary copy of the repository."""

import json

import pytest
import yaml
from conftest import copy_project, project_env, run_ok

pytestmark = pytest.mark.slow

TINY = {
    "teacher.epochs": 3,
    "sweep.n_trials": 2,
    "sweep.epochs": 2,
    "sweep.startup_trials": 1,
    "final.epochs": 2,
    "final.seeds": [0, 1],
    "report.bootstrap_samples": 200,
    "evaluate.throughput_repeats": 1,
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the project with its own git history and tiny params, reproduced once."""
    dest = copy_project(tmp_path_factory.mktemp("e2e") / "repo", TINY)
    env = project_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        run_ok(cmd, dest, env)
    return dest, env, run_ok(["dvc", "repro"], dest, env)


def test_every_stage_ran_and_wrote_its_outputs(repo):
    dest, _, log = repo
    for stage in ("prepare", "teacher", "sweep@soft", "sweep@hard", "distill@soft", "distill@hard", "baseline",
                  "evaluate", "report"):
        assert f"Running stage '{stage}'" in log
    for rel in ("models/teacher.pt", "models/vit/seed_1.pt", "models/deit_soft/seed_0.pt", "models/deit_hard/seed_1.pt",
                "sweeps/soft/best.json", "sweeps/hard/trials.csv", "metrics/history/deit_soft/seed_1.csv",
                "reports/report.md", "reports/figures/learning_curves.png", "reports/figures/sweeps.png",
                "reports/figures/per_class.png", "reports/figures/heads.png", "dvc.lock"):
        assert (dest / rel).exists(), rel


def test_metrics_are_real_numbers(repo):
    dest, _, _ = repo
    ev = json.loads((dest / "metrics/evaluation.json").read_text())
    assert set(ev) == {"teacher", "vit", "deit_soft", "deit_hard"}
    for name in ("deit_soft", "deit_hard"):
        for head in ("cls", "dist", "avg"):
            assert 0.0 <= ev[name][f"test_acc_{head}"] <= 1.0
            assert f"test_acc_{head}_std" in ev[name]  # two seeds
        assert ev[name]["n_seeds"] == 2
    assert ev["teacher"]["test_acc"] > 0.5  # 3 epochs of the small CNN on digits is far above chance
    best = json.loads((dest / "sweeps/soft/best.json").read_text())
    assert 0.1 <= best["alpha"] <= 0.9 and 1.0 <= best["tau"] <= 8.0
    report = (dest / "reports/report.md").read_text()
    assert f"{100 * ev['teacher']['test_acc']:.1f}" in report
    for word in ("soft", "hard", "95% CI"):
        assert word in report


def test_mlflow_has_every_run_with_curves_and_nested_trials(repo):
    dest, _, _ = repo
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillery")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    names = {r.info.run_name for r in runs}
    assert {"teacher", "vit-seed0", "vit-seed1", "deit_soft-seed0", "deit_hard-seed1", "sweep-soft", "sweep-hard"} <= names
    by_name = {r.info.run_name: r for r in runs}
    for kind in ("soft", "hard"):
        parent = by_name[f"sweep-{kind}"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 2
    curve = client.get_metric_history(by_name["deit_soft-seed0"].info.run_id, "val_acc")
    assert [m.step for m in curve] == [1, 2]
    tags = by_name["deit_hard-seed1"].data.tags
    assert tags["dvc_stage"] == "distill@hard" and tags["loss_type"] == "hard" and len(tags["git_commit"]) == 40


def test_second_repro_reruns_nothing(repo):
    dest, env, _ = repo
    log = run_ok(["dvc", "repro"], dest, env)
    assert "Running stage" not in log


def test_report_setting_reruns_only_the_report(repo):
    dest, env, _ = repo
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    raw["report"]["dpi"] = 80
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    log = run_ok(["dvc", "repro"], dest, env)
    assert [line for line in log.splitlines() if line.startswith("Running stage")] == ["Running stage 'report':"]


def test_soft_loss_setting_touches_only_the_soft_branch(repo):
    dest, env, _ = repo
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    raw["distill"]["soft"]["tau"]["high"] = 6.0
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    status = json.loads(run_ok(["dvc", "status", "--json"], dest, env).strip().splitlines()[-1])
    assert set(status) == {"sweep@soft", "distill@soft"}
