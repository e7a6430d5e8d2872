"""Shared fixtures for the model tests."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls are dominated by thread hand-offs on a shared 2-core machine: run them on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_interpreted():
    """Run a file of Triton cases in a child pytest under Triton's interpreter and fail with its report.
    TRITON_INTERPRET=1 must be set before Python imports triton, and importing sambay_model (through transformers
    and torch._dynamo) already imports it, so such cases cannot run in the test's own process."""

    def run(cases: Path, timeout: int) -> str:
        env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        report = proc.stdout[-12000:] + proc.stderr[-4000:]
        assert proc.returncode == 0, report
        assert " passed" in proc.stdout and "skipped" not in proc.stdout and "deselected" not in proc.stdout, report
        return proc.stdout

    return run
