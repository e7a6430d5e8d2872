"""The Triton kernels (compute_backend="triton") on CPU, through Triton's interpreter, in a fresh process.

TRITON_INTERPRET=1 must be set before Python imports triton, and importing sambay_model (through transformers and
torch._dynamo) already imports it, so the cases in ``triton_interpreter_cases.py`` (see its docstring) cannot
run in this process; this test runs them in a child pytest with the variable set, and fails with its report.
"""
import os
import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("triton_interpreter_cases.py")
REPO = Path(__file__).resolve().parents[2]


def test_triton_kernels_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    report = proc.stdout[-12000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, report
