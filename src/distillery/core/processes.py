"""Processes of one stage: how many threads each gets, and `host:pid` labels saying which process did
something and whether it is gone.

A sweep trial and an MLflow run carry the label of the process that started them. After a kill,
the next stage on the same host finds them still marked running and, if that process no longer
exists, closes them (a FAIL trial, a KILLED run). On another host a label proves nothing: there the
sweep falls back on heartbeats, and MLflow runs are left as they are.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping


def share_cores(env: MutableMapping[str, str], processes: int) -> None:
    """Give each of `processes` torch processes on this host its share of the cores, unless the user set
    OMP_NUM_THREADS. torch would take a thread per core in each: N times more threads than cores, whose
    spin-waits a busy CPU punishes far beyond 1/N."""
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_gone_here(label: str) -> bool:
    """True only for a process of this host that no longer exists (a reused pid reads as alive)."""
    host, _, pid = label.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        return False
    return False
