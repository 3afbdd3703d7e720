"""SIGKILL the real `dvc repro` of the tiny pipeline (pipeline_runs.py) once in every stage kind, and
compare what it ends with against the uninterrupted run test_pipeline_e2e.py reads. A file of its own so
that pytest-xdist runs it beside that file, not after it: the two are the suite's longest."""

import collections
import random
import re

import pytest
from conftest import project_env, running_runs
from pipeline_runs import STAGES, TINY, Kill, comparable_outputs, fresh_project, reference_run, repro_timeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def planned_epochs(stage: str) -> int:
    """Epochs (DISTILLERY_EPOCH_LOG lines, one per run and epoch) a stage trains under TINY: what the kill
    moments are counted in, known before the uninterrupted run ends (the test checks them against it)."""
    epochs, pilot = TINY["student.epochs"], len(TINY["final.seeds"])
    kind, _, arm = stage.partition("@")
    if kind == "teacher":
        return TINY["teacher.epochs"]
    if kind.startswith("sweep"):
        return 0 if arm == "control" else TINY["sweep.n_trials"] * epochs  # control: none's recipe, no trial
    if kind.startswith("final"):
        return pilot * epochs
    if kind.startswith("extra"):
        return (TINY["final.max_seeds"] - pilot) * epochs
    return 0


# Seconds from a stage's start to the next's, for the stages that train nothing: about what the
# uninterrupted tiny run took under `make test` here (kill points of earlier runs: prepare 2.5 s, seed_plan
# 4.0 s, evaluate 21 s and report 8.1 s into their stages were still in them). A kill that comes after the
# stage ended lands in DVC's bookkeeping or the next stage: a kill point as good as any (see the test).
STAGE_SECONDS = {"prepare": 5.0, "seed_plan": 6.0, "evaluate": 30.0, "report": 12.0}

# sweep@control trains nothing under sweep.recipe: shared (it records none's recipe): not a sweep kill point
KINDS = {"prepare": ["prepare"], "teacher": ["teacher"], "sweep": ["sweep@none"],
         "sweep_kd": ["sweep_kd@soft", "sweep_kd@hard"], "final": ["final@none", "final@control"],
         "final_kd": ["final_kd@soft", "final_kd@hard"], "seed_plan": ["seed_plan"],
         "extra": ["extra@none", "extra@control"], "extra_kd": ["extra_kd@soft", "extra_kd@hard"],
         "evaluate": ["evaluate"], "report": ["report"]}


def test_killed_anywhere_it_ends_byte_identical_and_redoes_at_most_one_epoch_per_kill(tmp_path_factory, tmp_path,
                                                                                    record_property):
    """SIGKILL `dvc repro` (its whole process group) once in every stage kind, at a moment drawn from a
    seeded generator, rerun after each kill, then compare every result file with the uninterrupted run's
    and count the epochs trained twice.

    Moments are counted in epochs, not seconds: under load a stage can run faster than in the reference
    run, and a kill timed in seconds then landed in the next stage (CI, with two test workers). Teacher,
    sweep and final kills come after epoch 1..E-1 of the stage's E, plus up to 0.5 s: inside the stage
    for sure, at times while it writes a checkpoint. The distilled arms' kills come after the stage's last epoch,
    while it writes its outputs or DVC stores them. Stages without epochs: a fraction of STAGE_SECONDS.

    Where such a moment can land, and why none of them can fail this test (none is excluded):
    - in a stage's process: every file it writes is renamed into place whole (core/files.py), training
      resumes from the checkpoint of the last epoch, finished runs are restored from checkpoints/finished/,
      and the next stage marks the killed MLflow runs KILLED;
    - in DVC between stages (hashing, storing outputs in its cache and run cache, which it renames into
      place): the next DVC redoes what it did not record;
    - in DVC's in-place rewrite of dvc.lock or .dvc/tmp/rwlock: the repair step of `make repro`, which
      this test runs before each rerun, restores the lock copy of the last stage's start or removes the
      rwlock (core/dvc_state.py); a lock cut where DVC still reads it reruns the stages it lacks, which
      restore their finished work; test_a_lock_cut_short_... makes each of these cuts on purpose;
    - in DVC appending to a .gitignore: it appends the entry again on a line of its own;
    - in the repair step itself: the lock it restores is renamed into place whole."""
    rng = random.Random(20261126)

    def moment(kind, stage):
        trained = planned_epochs(stage)
        if kind in ("teacher", "sweep", "final", "extra") and trained > 1:
            return Kill(stage, rng.randint(1, trained - 1), rng.uniform(0.0, 0.5))
        if trained:
            return Kill(stage, trained, rng.uniform(0.0, 1.0))
        # late: the first seconds of a stage are Python importing torch, where a kill is least interesting
        return Kill(stage, 0, rng.uniform(0.4, 0.95) * STAGE_SECONDS[stage])

    plan = [moment(kind, rng.choice(stages)) for kind, stages in KINDS.items()]  # pipeline order
    dest = fresh_project(tmp_path / "repo")
    epochs = tmp_path / "epochs.log"
    env = {**project_env(), "DISTILLERY_EPOCH_LOG": str(epochs)}
    kills = []

    def trained_so_far():
        return epochs.read_text().splitlines() if epochs.exists() else []

    def redone_since(count):  # epochs the attempt that began at line `count` trained a second time
        done = trained_so_far()
        return len(collections.Counter(done[count:]) & collections.Counter(done[:count]))

    for kill in plan:
        log, starts = repro_timeline(dest, env, kill)
        if kills:  # this attempt resumed after the previous kill: charge its repeats to that kill
            kills[-1][-1] = redone_since(kills[-1][-2])
        if "__end__" in starts:  # the rest of the pipeline finished within those seconds: no kill this time
            continue
        running = re.findall(r"Running stage '([^']+)'", log)
        lines = [line.strip() for line in log.replace("\r", "\n").splitlines() if line.strip()]
        kills.append([kill.stage, f"{kill.epochs} ep + {kill.seconds:.2f} s",
                      running[-1] if running else "(before any stage)", lines[-1][:90],
                      len(trained_so_far()), 0])
    repro_timeline(dest, env)  # rerun to the end, uninterrupted
    if kills:
        kills[-1][-1] = redone_since(kills[-1][-2])
    repo = reference_run(tmp_path_factory)  # made on the other worker meanwhile, or now
    assert {stage: repo.stage_epochs[stage] for stage in STAGES} == {stage: planned_epochs(stage) for stage in STAGES}
    trained = trained_so_far()
    redone = sorted((collections.Counter(trained) - collections.Counter(repo.epochs)).elements())
    record_property("shown_in_summary", "\n".join([  # in every `make test` log, passing or not (conftest.py)
        "kill points (planned stage | after its epochs + seconds | stage running | last output line | "
        "epochs trained before the kill | epochs the next attempt trained twice):",
        *("   | " + " | ".join(map(str, kill)) for kill in kills),
        f"epochs: uninterrupted {len(repo.epochs)}, with kills {len(trained)}, trained twice {len(redone)}: "
        f"{redone}"]))
    assert len(kills) >= 5, kills
    assert {k[2].split("@")[0] for k in kills} >= {"teacher", "sweep", "final"}, kills  # every training stage kind
    assert len(redone) <= len(kills) and all(k[-1] <= 1 for k in kills), (redone, kills)
    assert running_runs(dest) == []  # each killed stage's MLflow runs were closed as KILLED by the next
    after = comparable_outputs(dest)
    assert set(after) == set(repo.snapshot)
    differing = [rel for rel in after if after[rel] != repo.snapshot[rel]]
    assert not differing, (differing, kills)
