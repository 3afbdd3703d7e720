"""Real engines on loopback for the `engine` tests: a throw-away PostgreSQL 15 server."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _bindir() -> Path | None:
    for candidate in (Path("/usr/lib/postgresql/15/bin"),):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    return None


def postgres_missing() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    if _bindir() is None:
        return "PostgreSQL's initdb is not installed (Debian: postgresql-15)"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or subprocess.run(
            ["id", "postgres"], capture_output=True).returncode != 0):
        return "running as root without a `postgres` user and runuser (initdb refuses root)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(dbs: tuple[str, ...] = ("distillery",)):
    """Start a private server on 127.0.0.1 (trust auth, fsync off) with databases `dbs`; yield the URL
    prefix (append a database name), stop it."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="distillery-pg-"))  # under /tmp: the postgres user must reach it
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        root.chmod(0o755)
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()

    def run(*cmd: str) -> None:
        proc = subprocess.run([*as_postgres, *cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stdout[-800:]} {proc.stderr[-800:]}")

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
            f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200", "start")
        try:
            for db in dbs:
                run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db)
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/"
        finally:
            subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=120)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_url: str, artifacts: Path, log: Path):
    """`mlflow server` on 127.0.0.1 with a database backend store and a served artifact destination."""
    import sys
    import time
    import urllib.request

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).parent / "mlflow"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", backend_url, "--artifacts-destination",
                                 artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield uri
    finally:
        import os
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
