"""`sweep.workers: N`: the sweep stage starts N trial workers on the arm's study and waits for them.

Each worker is `python pipeline/sweep.py --arm <arm> --worker`, the same command a user runs by hand
on another host to join the study (with `sweep.storage` pointing at a shared database). With
several GPUs, worker i sees only GPU i mod count (CUDA_VISIBLE_DEVICES), so N workers on an N-GPU
box train one trial per GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..core.errors import TrainingError
from ..core.processes import share_cores


def worker_env(index: int, gpus: int, workers: int) -> dict[str, str]:
    env = dict(os.environ)
    if gpus > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    share_cores(env, workers)
    return env


def run_workers(n: int, arm: str, script: Path, params: str | None, gpus: int, log_dir: Path) -> None:
    """Start `n` workers, wait for all; a failed worker is one error line pointing at its log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        log = open(log_dir / f"worker-{i}.log", "w")
        cmd = [sys.executable, str(script), "--arm", arm, "--worker", *(["--params", params] if params else [])]
        procs.append((subprocess.Popen(cmd, env=worker_env(i, gpus, n), stdout=log, stderr=subprocess.STDOUT), log))
    print(f"sweep@{arm}: {n} workers started" + (f", one per GPU of {gpus}" if gpus > 1 else "")
          + f"; their output: {log_dir}/worker-*.log")
    failed = []
    try:
        for i, (proc, log) in enumerate(procs):
            if proc.wait() != 0:
                failed.append(i)
            log.close()
    except BaseException:
        for proc, _ in procs:  # interrupted: do not leave orphans training in the background
            proc.kill()
        raise
    if failed:
        last = (log_dir / f"worker-{failed[0]}.log").read_text(errors="replace").strip().splitlines()[-1:]
        raise TrainingError(f"sweep@{arm}: worker(s) {failed} failed; worker {failed[0]} ended with: "
                            f"{last[0] if last else '(no output)'}")
