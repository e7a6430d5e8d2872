"""tests/scripts/slow_preempt_save/sitecustomize.py: the Slurm test's slow pre-emption save, injected from outside
the product. Checked here in a plain subprocess, so that test_slurm_local_e2e.py (slow, needs Slurm) is not the only
place a broken hook would show."""
import os
import subprocess
import sys
from pathlib import Path

HOOK = Path(__file__).resolve().parent / "slow_preempt_save"
# Calls Trainer._save_on_signal on a stand-in trainer and prints what it did and how long it took.
PROBE = """
import time, types
from train.engine.trainer import Trainer
calls = []
fake = types.SimpleNamespace(save=lambda: calls.append("save"), _say=calls.append, step=3,
                             rd=types.SimpleNamespace(checkpoints="ck"))
start = time.monotonic()
Trainer._save_on_signal(fake)
print("RESULT", calls[0], time.monotonic() - start >= 0.3)
"""


def probe(delay: str | None) -> str:
    env = {**os.environ, "PYTHONPATH": str(HOOK)}
    env.pop("SAMBAY_TEST_SLOW_PREEMPT_SAVE_S", None)
    if delay is not None:
        env["SAMBAY_TEST_SLOW_PREEMPT_SAVE_S"] = delay
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_hook_sleeps_before_the_pre_emption_save():
    out = probe("0.3")
    assert "SAMBAY_TEST_SLOW_PREEMPT_SAVE_S=0.3: emulating a slow save" in out
    assert "RESULT save True" in out


def test_hook_is_inert_without_its_variable():
    out = probe(None)
    assert "emulating" not in out and "RESULT save False" in out
