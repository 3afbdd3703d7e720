"""Which process did something, and whether it is gone: `host:pid` labels.

A sweep trial and an MLflow run carry the label of the process that started them. After a kill,
the next stage on the same host finds them still marked running and, if that process no longer
exists, closes them (a FAIL trial, a KILLED run). On another host a label proves nothing: there the
sweep falls back on heartbeats, and MLflow runs are left as they are.
"""

from __future__ import annotations

import os
import socket


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
