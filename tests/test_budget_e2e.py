"""student.epochs: auto end to end: the budget ladder runs once, on the recipe arm's val, and every arm's
trials and final seeds train at the rung it chose; the report declares it."""

import json

import pandas as pd
import pytest
from conftest import copy_project, run_ok, project_env
from pipeline_runs import TINY, ran

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

AUTO = {**TINY, "student.epochs": "auto", "budget.rungs": [3, 4], "budget.seeds": 2, "budget.min_gain": 0.0,
        "arms.with_teacher": ["soft"], "final.max_seeds": 2}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = copy_project(tmp_path_factory.mktemp("auto") / "repo", AUTO)
    env = project_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        run_ok(cmd, dest, env)
    log = run_ok(["dvc", "repro"], dest, env, timeout=1500)
    return dest, env, log


def test_every_arm_trains_at_the_rung_the_ladder_chose(project):
    dest, _, log = project
    budget = json.loads((dest / "metrics/budget.json").read_text())
    assert budget["rule"] in ("ladder", "ladder-capped") and budget["arm"] == "none"
    assert [r["epochs"] for r in budget["rungs"]] == [3, 4]  # min_gain 0: the second rung is always tried
    assert all(len(r["per_seed"]) == 2 for r in budget["rungs"])
    chosen = budget["epochs"]
    gain = 100 * (sum(budget["rungs"][1]["per_seed"].values()) - sum(budget["rungs"][0]["per_seed"].values())) / 2
    assert chosen == (4 if gain >= 0 else 3)
    ladder = pd.read_csv(dest / "sweeps/budget/ladder.csv")
    assert sorted(ladder.groupby(["rung", "seed"]).size().items()) == [((3, 1000), 3), ((3, 1001), 3),
                                                                       ((4, 1000), 4), ((4, 1001), 4)]
    for arm in ("none", "control", "soft"):
        assert json.loads((dest / f"sweeps/{arm}/best.json").read_text())["epochs"] == chosen, arm
        final = json.loads((dest / f"metrics/final/{arm}.json").read_text())
        assert final["epochs"] == chosen, arm
        for seed in (1, 2):
            assert len(pd.read_csv(dest / f"metrics/history/{arm}/seed_{seed}.csv")) == chosen, (arm, seed)
    for arm in ("none", "soft"):
        trials = pd.read_csv(dest / f"sweeps/{arm}/trials.csv")
        assert (trials.loc[trials.state == "COMPLETE", "epochs_run"] == chosen).all(), arm
    assert f"Epoch budget: {chosen} epochs for every arm, chosen on val by the budget ladder" in \
        (dest / "reports/report.md").read_text()
    assert "Running stage 'budget'" in log


def test_the_ladder_runs_are_tracked_and_a_rerun_trains_nothing(project):
    import mlflow

    dest, env, _ = project
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillery")
    runs = client.search_runs([exp.experiment_id], "tags.model_kind = 'budget'")
    assert sorted(r.info.run_name for r in runs) == ["budget-3ep-seed1000", "budget-3ep-seed1001",
                                                      "budget-4ep-seed1000", "budget-4ep-seed1001"]
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.note.content"] for r in runs)
    assert ran(run_ok(["dvc", "repro"], dest, env)) == set()


def test_a_ladder_setting_reruns_the_budget_and_everything_after_it_but_not_the_teacher(project):
    dest, env, _ = project
    path = dest / "params.yaml"
    original = path.read_text()
    try:
        path.write_text(original.replace("min_gain: 0.0", "min_gain: 0.5"))
        stages = ran(run_ok(["dvc", "repro", "--dry", "--force-downstream"], dest, env))
    finally:
        path.write_text(original)
    assert "budget" in stages and "final_kd@soft" in stages and "sweep@none" in stages
    assert not stages & {"prepare", "teacher"}


def test_a_ladder_killed_after_a_rung_restores_that_rung_and_ends_where_it_would_have(project):
    """SIGKILL the budget stage once its first rung has finished (both seeds' epochs logged), then rerun it:
    the finished rung comes back from checkpoints/finished/ (no epoch of it trained again), the next rung
    trains, and metrics/budget.json is the uninterrupted ladder's but for each rung's `seconds` (a timing)."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    dest, env, _ = project
    def untimed():
        budget = json.loads((dest / "metrics/budget.json").read_text())
        return {**budget, "rungs": [{k: v for k, v in r.items() if k != "seconds"} for r in budget["rungs"]]}

    uninterrupted = untimed()
    for kept in (dest / "checkpoints/finished").glob("budget-*"):
        shutil.rmtree(kept)  # what the first run kept: without this every rung would be restored at once
    log = dest / "budget-epochs.log"
    run_env = {**env, "DISTILLERY_EPOCH_LOG": str(log), "PYTHONUNBUFFERED": "1"}
    first_rung = AUTO["budget.rungs"][0] * AUTO["budget.seeds"]
    proc = subprocess.Popen([sys.executable, "pipeline/budget.py"], cwd=dest, env=run_env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (log.exists() and len(log.read_text().splitlines()) >= first_rung) and proc.poll() is None:
        assert time.monotonic() < deadline, "the first rung never finished"
        time.sleep(0.02)
    time.sleep(0.3)  # past the rung's last epoch: while it saves, or in the next rung's first epoch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    trained_before = log.read_text().splitlines()
    out = run_ok([sys.executable, "pipeline/budget.py"], dest, run_env)
    again = log.read_text().splitlines()[len(trained_before):]
    assert not [line for line in again if line.startswith("budget-3ep")], (trained_before, again, out[-2000:])
    assert "restored from" in out
    assert untimed() == uninterrupted
