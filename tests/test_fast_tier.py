"""`make test-fast` trains nothing and starts no stage process: a test that does fails there, naming the fix."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_training_test_fails_in_the_fast_tier_and_passes_outside_it():
    test = "tests/test_train.py::test_the_loop_learns_the_toy_task"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", test]
    fast = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DISTILLERY_TEST_TIER": "fast"})
    assert fast.returncode == 1 and "fast tier: this test trains a model; mark it @pytest.mark.slow" in fast.stdout, \
        fast.stdout[-2000:]
    full = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "DISTILLERY_TEST_TIER"})
    assert full.returncode == 0, full.stdout[-2000:]
