"""Helpers for tests that run the real pipeline in a temporary copy of the repository."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distillery.core.processes import share_cores  # torch-free, like all of core

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ("reports/", "metrics/", "sweeps/")

# Under pytest-xdist (make test: -n 2) every worker, and every stage process it starts, gets its share of
# the cores. torch would take a thread per core in each: twice as many threads as cores, which busy
# machines punish (a two-worker sweep test taking 76 s here ran past 600 s in CI with 2 threads per
# process). Set before any test module imports torch.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share_cores(os.environ, int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))

# xdist (--dist loadfile) hands out whole files in collection order: the longest first, so that no
# worker is left with a long file when the other has finished.
LONGEST_FIRST = ("test_pipeline_e2e.py", "test_pipeline_kills.py", "test_robustness.py", "test_profiles.py", "test_engines.py",
                 "test_distributed.py")


# `make test-fast` (DISTILLERY_TEST_TIER=fast): the tier a developer runs before every commit trains nothing
# and starts no stage process. A test that does either fails here with the reason, rather than quietly
# making the tier slow: mark it `slow` (pyproject.toml's markers).
FAST_TIER = os.environ.get("DISTILLERY_TEST_TIER") == "fast"


@pytest.fixture(autouse=FAST_TIER)
def _fast_tier_guard(monkeypatch):
    import distillery.training.loop as loop

    def trains(*args, **kwargs):
        raise AssertionError("fast tier: this test trains a model; mark it @pytest.mark.slow")

    real_popen = subprocess.Popen.__init__

    def starts(self, args, *rest, **kwargs):
        argv = [str(a) for a in (args if isinstance(args, (list, tuple)) else [args])]
        if argv and (Path(argv[0]).name in ("dvc", "make", Path(sys.executable).name) or "python" in Path(argv[0]).name):
            raise AssertionError(f"fast tier: this test starts a process ({' '.join(argv)[:80]}); mark it "
                                 "@pytest.mark.slow")
        real_popen(self, args, *rest, **kwargs)

    monkeypatch.setattr(loop, "_train_epoch", trains)
    monkeypatch.setattr(subprocess.Popen, "__init__", starts)
    yield


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file is kept


def copy_project(dest: Path, overrides: dict) -> Path:
    """Tracked and untracked-but-not-ignored files (working versions), minus committed results."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file() and not rel.startswith(RESULTS) and rel != "dvc.lock":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    for dotted, value in overrides.items():
        set_dotted(raw, dotted, value)
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def set_dotted(raw: dict, dotted: str, value) -> None:
    """raw["a"]["b"] = value for dotted "a.b" (params.yaml as loaded)."""
    *parents, last = dotted.split(".")
    for key in parents:
        raw = raw[key]
    raw[last] = value


def project_env() -> dict:
    """This interpreter's environment first on PATH (for `python` and `dvc`), no inherited DVC_ROOT."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("DVC_ROOT", None)
    return env


def running_runs(project: Path) -> list[str]:
    """Names of the project's MLflow runs still marked RUNNING."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_name for r in client.search_runs(ids, filter_string="attributes.status = 'RUNNING'")]


def run_ok(cmd, cwd, env=None, timeout=900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env or project_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def pytest_terminal_summary(terminalreporter):
    """Print what a test recorded as ("shown_in_summary", text): a test's own print would stay inside
    its xdist worker, while recorded properties travel back with the test's report."""
    shown = {}
    for reports in terminalreporter.stats.values():
        for rep in reports:
            for name, value in getattr(rep, "user_properties", ()):
                if name == "shown_in_summary":
                    shown[rep.nodeid] = value
    for nodeid, text in shown.items():
        terminalreporter.write_sep("-", nodeid.split("::")[-1])
        terminalreporter.write_line(text)
