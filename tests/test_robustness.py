"""Kills, concurrent workers and determinism, on real stage processes in a temporary project."""

import json
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from distillery.core.processes import share_cores
from conftest import copy_project, project_env, run_ok, running_runs

pytestmark = pytest.mark.slow

SMALL = {
    "teacher.epochs": 3,
    "student.epochs": 6,
    "final.seeds": [1],
    "sweep.n_trials": 3,
    "sweep.cold_trials": 1,
    "sweep.prune_from_epoch": 3,
    "sweep.startup_trials": 1,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = copy_project(tmp_path_factory.mktemp("robust") / "proj", SMALL)
    run_ok([sys.executable, "pipeline/prepare.py"], dest)
    run_ok([sys.executable, "pipeline/teacher.py"], dest)
    return dest


def stage(project, *args, env=None):
    """A stage process whose output goes to a file: an unread pipe would block it once full."""
    path = project / f"stage-{time.time_ns()}.log"
    with open(path, "w") as log:
        proc = subprocess.Popen([sys.executable, *args], cwd=project, env=env or project_env(), stdout=log,
                                stderr=subprocess.STDOUT, text=True)
    proc.log_path = path
    return proc


def tail(proc, n=3000):
    return proc.log_path.read_text(errors="replace")[-n:]


def trial_states(db):
    """The trials' states, read without Optuna: opening an Optuna storage on a database a worker is
    still creating races its schema setup and can crash the worker."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return [row[0] for row in con.execute("SELECT state FROM trials")]
    except sqlite3.Error:
        return []  # not created yet, or busy: ask again


def wait_for(predicate, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoint_epoch(path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)["epoch"] + 1
    except Exception:  # not written yet, or being replaced right now
        return 0


def test_same_seed_gives_byte_identical_metrics(project):
    first = (project / "metrics/teacher.json").read_bytes()
    run_ok([sys.executable, "pipeline/teacher.py"], project)
    assert (project / "metrics/teacher.json").read_bytes() == first


def test_killed_training_resumes_to_the_uninterrupted_result(project):
    run_ok([sys.executable, "pipeline/sweep.py", "--arm", "none"], project)
    run_ok([sys.executable, "pipeline/final.py", "--arm", "none"], project)
    metrics = project / "metrics/final/none.json"
    uninterrupted = metrics.read_bytes()
    metrics.unlink()
    shutil.rmtree(project / "checkpoints/finished")  # or the rerun would restore the finished run, not train

    proc = stage(project, "pipeline/final.py", "--arm", "none")
    ckpt = project / "checkpoints/none-seed1.pt"
    wait_for(lambda: checkpoint_epoch(ckpt) >= 2, what="two epochs checkpointed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not metrics.exists()

    log = run_ok([sys.executable, "pipeline/final.py", "--arm", "none"], project)
    assert "resuming from" in log
    assert metrics.read_bytes() == uninterrupted
    assert not ckpt.exists()  # a finished run leaves no checkpoint a later run could wrongly resume


def test_a_finished_run_is_restored_not_retrained_after_dvc_deleted_the_outputs(project, tmp_path):
    """What DVC does before rerunning a stage that was killed after its first seeds finished: delete the
    stage's outputs. The finished runs come back from checkpoints/finished/ without a single epoch."""
    run_ok([sys.executable, "pipeline/final.py", "--arm", "none"], project)
    model, metrics = project / "models/none/seed_1.pt", project / "metrics/final/none.json"
    before = model.read_bytes(), metrics.read_bytes()
    shutil.rmtree(project / "models/none")
    metrics.unlink()
    epochs = tmp_path / "epochs.log"
    env = {**project_env(), "DISTILLERY_EPOCH_LOG": str(epochs)}
    log = run_ok([sys.executable, "pipeline/final.py", "--arm", "none"], project, env)
    assert "restored from" in log and not epochs.exists()  # no epoch trained
    assert (model.read_bytes(), metrics.read_bytes()) == before


def test_a_model_trained_by_other_code_is_not_restored(monkeypatch, tmp_path):
    from distillery.training import runs

    one, two = tmp_path / "one.py", tmp_path / "two.py"
    one.write_text("x = 1\n")
    two.write_text("x = 2\n")
    monkeypatch.setattr(sys, "argv", [str(one)])
    first = runs.code_digest()
    monkeypatch.setattr(sys, "argv", [str(two)])
    assert runs.code_digest() != first


def study_trials(project, kind):
    storage = f"sqlite:///{project / 'sweeps' / kind / 'study.db'}"
    summaries = optuna.study.get_all_study_summaries(storage)
    assert len(summaries) == 1
    return optuna.load_study(study_name=summaries[0].study_name, storage=storage).get_trials(deepcopy=False)


def finished(trials):
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]


def test_killed_sweep_keeps_finished_trials_and_completes_to_the_cap(project):
    # Trials of ~10 s, so the window "one finished, one running" is wide for the poll below (at SMALL's
    # 6 epochs, with the teacher's logits replayed from the cache, a trial takes ~2 s). Restored
    # afterwards for the tests that follow.
    params = project / "params.yaml"
    original = params.read_text()
    raw = yaml.safe_load(original)
    raw["student"]["epochs"] = 15
    # two fused batches of two: the kill lands in the second, after the first batch was told
    raw["sweep"]["n_trials"], raw["train"]["fuse"] = 4, 2
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        _kill_and_resume_a_sweep(project)
    finally:
        params.write_text(original)


def _kill_and_resume_a_sweep(project):
    proc = stage(project, "pipeline/sweep.py", "--arm", "soft")
    db = project / "sweeps/soft/study.db"

    def one_done_one_running():  # the first batch told, the second one epoch in (its settings drawn)
        states = trial_states(db) if db.exists() else []
        second = [project / f"checkpoints/soft-trial-slot{k}.pt" for k in (2, 3)]
        return (sum(s in ("COMPLETE", "PRUNED") for s in states) >= 2 and "RUNNING" in states
                and any(checkpoint_epoch(p) >= 1 for p in second if p.exists()))

    try:
        wait_for(one_done_one_running, what="a finished trial and a running one")
    except AssertionError as exc:
        proc.kill()
        raise AssertionError(f"{exc}; worker exit code {proc.poll()}, its output:\n{tail(proc)}") from None
    before = {t.number: t.params for t in finished(study_trials(project, "soft"))}
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    epochs_kept = {p.name: checkpoint_epoch(p) for p in (project / "checkpoints").glob("soft-trial-slot*.pt")}
    log = run_ok([sys.executable, "pipeline/sweep.py", "--arm", "soft"], project)
    trials = study_trials(project, "soft")
    done = finished(trials)
    assert len(done) == 4
    assert all(before[n] == next(t.params for t in done if t.number == n) for n in before)  # nothing lost
    failed = [t for t in trials if t.state.name not in ("COMPLETE", "PRUNED")]
    assert [t.state.name for t in failed] == ["FAIL", "FAIL"]  # the killed batch
    assert json.loads((project / "sweeps/soft/best.json").read_text())["trial"] in {t.user_attrs["slot"] for t in done}
    # each killed trial's slot is drawn again with the same settings and resumes from its last epoch
    for dead in failed:
        replacement = next(t for t in done if t.user_attrs["slot"] == dead.user_attrs["slot"])
        assert replacement.params == dead.params and replacement.number > dead.number
    killed_at = [epochs_kept.get(f"soft-trial-slot{t.user_attrs['slot']}.pt", 0) for t in failed]
    assert ("resuming from" in log) == (max(killed_at) > 0), log[-2000:]
    assert not list((project / "checkpoints").glob("soft-trial-slot*.pt"))  # the stage ended: none left
    assert running_runs(project) == []  # the killed trial's and sweep's MLflow runs: closed as KILLED


def test_two_sweep_workers_stop_at_exactly_the_cap(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["sweep"]["n_trials"], raw["train"]["fuse"] = 4, 2  # each asks two at a time: room for both
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # their share of the cores, as sweep.workers gives them: with 2 threads each on 2 cores, this test
    # (then 6 trials) took 76 s here and over 600 s in one CI run
    env = project_env()
    share_cores(env, 2)
    workers = [stage(project, "pipeline/sweep.py", "--arm", "hard", env=env) for _ in range(2)]
    try:
        for w in workers:
            w.wait(timeout=900)
    except subprocess.TimeoutExpired:
        for w in workers:
            w.kill()
        raise AssertionError("the two workers did not finish in 900 s; their output:\n"
                             + "\n---\n".join(tail(w) for w in workers)) from None
    logs = [tail(w) for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    trials = study_trials(project, "hard")
    assert len(trials) == 4 and len(finished(trials)) == 4
    assert sorted(t.user_attrs["slot"] for t in trials) == [0, 1, 2, 3]
    owners = {t.user_attrs["worker"] for t in trials}
    assert len(owners) == 2  # both workers took part


def test_sweep_workers_start_inside_the_stage_and_share_the_cap(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    # control has a study of its own only when each arm tunes its own recipe
    recipe = raw["sweep"].get("recipe", "shared")
    raw["sweep"]["n_trials"], raw["sweep"]["workers"], raw["sweep"]["recipe"] = 4, 2, "per_arm"
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        log = run_ok([sys.executable, "pipeline/sweep.py", "--arm", "control"], project)
    finally:
        raw["sweep"]["workers"], raw["sweep"]["recipe"] = 1, recipe
        (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert "2 workers started" in log and "best trial" in log
    trials = study_trials(project, "control")
    assert len(trials) == 4 and len(finished(trials)) == 4  # one machine, file lock: exactly the cap
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert len(list((project / "sweeps/control/workers").glob("worker-*.log"))) == 2
