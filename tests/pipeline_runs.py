"""The tiny pipeline the end-to-end tests run, and the uninterrupted run of it they share.

test_pipeline_e2e.py edits and reruns that run; test_pipeline_kills.py kills a run of its own and compares
it with the files saved right after the uninterrupted one. Under pytest-xdist the two files run on different
workers, at the same time: the first to ask for the uninterrupted run makes it, under a file lock in the
session's shared temporary folder, and saves what the other needs beside it."""

import csv
import io
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import yaml
from conftest import copy_project, project_env, run_ok
from filelock import FileLock

ARMS = ("none", "control", "soft", "hard", "fake")
STAGES = ("prepare", "teacher", "budget", "sweep@none", "sweep@control", "sweep_kd@soft", "sweep_kd@hard", "sweep_kd@fake",
          "final@none", "final@control", "final_kd@soft", "final_kd@hard", "final_kd@fake", "seed_plan", "extra@none",
          "extra@control", "extra_kd@soft", "extra_kd@hard", "extra_kd@fake", "evaluate", "report")
TINY = {
    "teacher.epochs": 3,
    "student.epochs": 3,
    "sweep.n_trials": 2,
    "sweep.cold_trials": 1,  # the tiny studies start cold (3 epochs): n_trials is their budget
    "sweep.startup_trials": 1,
    "sweep.objective_epochs": 1,
    "sweep.prune_from_epoch": 3,
    "arms.with_teacher": ["soft", "hard", "fake"],  # every arm end to end (the default leaves fake to a profile)
    "final.seeds": [1, 2],
    "final.primary_seeds": 2,
    "final.extend": "all",
    "final.max_seeds": 3,  # two pilot seeds cannot reach ±1: the plan adds seed 3 to every arm
    "evaluate.throughput_repeats": 1,
}


# What `make repro` runs: repair DVC's files after a kill inside its own bookkeeping, then dvc repro.
MAKE_REPRO = ["sh", "-c", "python -m distillery.core.dvc_state && exec dvc repro"]


class Reproduced(NamedTuple):
    dest: Path
    env: dict
    log: str
    stage_epochs: dict  # stage -> epochs it trained (DISTILLERY_EPOCH_LOG lines)
    snapshot: dict  # compared file -> its comparable bytes, taken right after the run
    epochs: list  # one line per trained epoch (DISTILLERY_EPOCH_LOG)


def fresh_project(dest: Path) -> Path:
    copy_project(dest, TINY)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        run_ok(cmd, dest)
    return dest


class Kill(NamedTuple):
    """SIGKILL `seconds` after `stage` has trained `epochs` epochs (0: after it started)."""
    stage: str
    epochs: int
    seconds: float


def repro_timeline(dest: Path, env: dict, kill: Kill | None = None) -> tuple[str, dict]:
    """What `make repro` runs, with the moment each stage starts (seconds) and the epochs trained before it
    (lines of env's DISTILLERY_EPOCH_LOG). With `kill`: SIGKILL the whole process group at that point,
    and return what it had printed."""
    path = dest.parent / f"repro-{time.time_ns()}.log"
    epoch_log = Path(env["DISTILLERY_EPOCH_LOG"]) if "DISTILLERY_EPOCH_LOG" in env else None

    def epochs_so_far():
        return len(epoch_log.read_text().splitlines()) if epoch_log and epoch_log.exists() else 0

    with open(path, "w") as out:
        proc = subprocess.Popen(MAKE_REPRO, cwd=dest, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    t0, starts, armed_at = time.monotonic(), {}, None
    while True:
        text = path.read_text(errors="replace")
        for stage in re.findall(r"Running stage '([^']+)'", text):
            starts.setdefault(stage, (time.monotonic() - t0, epochs_so_far()))
        if kill and armed_at is None and kill.stage in starts and \
                epochs_so_far() - starts[kill.stage][1] >= kill.epochs:
            armed_at = time.monotonic()
        if armed_at is not None and time.monotonic() >= armed_at + kill.seconds:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return path.read_text(errors="replace"), starts
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    text = path.read_text(errors="replace")
    assert proc.returncode == 0, f"dvc repro failed:\n{text[-3000:]}"
    starts["__end__"] = (time.monotonic() - t0, epochs_so_far())  # with kill: the pipeline ended before it came
    return text, starts


# Timings and provenance differ between two runs of the same work; every other byte must not.
NOT_COMPARED = ("metrics/throughput.json",)
NOT_COMPARED_COLUMNS = ("epoch_seconds", "teacher_from_cache")


def comparable_outputs(dest: Path) -> dict:
    files = [*dest.glob("metrics/**/*.json"), *dest.glob("metrics/**/*.csv"), *dest.glob("sweeps/*/*.json"),
             *dest.glob("sweeps/*/*.csv"), dest / "reports/effects.json"]
    out = {}
    for path in sorted(files):
        rel = str(path.relative_to(dest))
        if rel in NOT_COMPARED:
            continue
        data = path.read_text()
        if path.suffix == ".csv" and rel.startswith("metrics/history/"):
            rows = list(csv.reader(io.StringIO(data)))
            keep = [i for i, name in enumerate(rows[0]) if name not in NOT_COMPARED_COLUMNS]
            data = "\n".join(",".join(row[i] for i in keep) for row in rows)
        out[rel] = data
    return out


def lock_without_timings(lock: bytes) -> dict:
    """dvc.lock as data, without the hashes of the files a rerun times afresh (NOT_COMPARED, and the
    report, which quotes the throughputs)."""
    data = yaml.safe_load(lock)
    for stage in data["stages"].values():
        for entry in (*stage.get("deps", ()), *stage.get("outs", ())):
            if entry["path"] in (*NOT_COMPARED, "reports/report.md"):
                entry.pop("md5"), entry.pop("size")
    return data


def ran(log):
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def reference_run(tmp_path_factory) -> Reproduced:
    """The uninterrupted tiny run, made once per test session whichever worker asks first."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: one folder per worker
    saved = shared / "reference.json"
    with FileLock(str(shared / "reference.lock")):
        if not saved.exists():
            run = _reproduce(shared / "reference" / "repo")
            saved.write_text(json.dumps({**run._asdict(), "dest": str(run.dest), "env": None}))
        data = json.loads(saved.read_text())
    return Reproduced(**{**data, "dest": Path(data["dest"]), "env": project_env()})


def _reproduce(dest: Path) -> Reproduced:
    dest = fresh_project(dest)
    env = project_env()
    epochs = dest.parent / "epochs.log"
    log, starts = repro_timeline(dest, {**env, "DISTILLERY_EPOCH_LOG": str(epochs)})
    following = dict(zip(starts, list(starts)[1:]))  # stage -> the next stage, or "__end__"
    trained = {stage: starts[nxt][1] - starts[stage][1] for stage, nxt in following.items()}
    return Reproduced(dest, env, log, trained, comparable_outputs(dest), epochs.read_text().splitlines())
