"""Multi-stage SFT: stage chaining through exports, skip-on-DONE, stage selection, data/tokenizer checks.

The slow end-to-end tests; the fast ones are in test_sft_stages.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.train.builders import REPO, base_overrides


def run_sft(overrides):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "train.sft", *overrides], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-5000:]
    return p


@pytest.mark.slow
def test_two_stages_chain_and_skip_when_done(sft_setup, tmp_path):
    rd = tmp_path / "run"
    run_sft(base_overrides(sft_setup, rd))
    for name, steps in (("one", 2), ("two", 3)):
        assert (rd / name / "DONE").exists()
        rows = [json.loads(x) for x in (rd / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, steps + 1))
        assert all(np.isfinite(r["loss"]) for r in rows)
        assert (rd / name / "export" / "model.safetensors").exists()
    from data.tokenizer import fingerprint

    assert fingerprint(rd / "two" / "export") == fingerprint(sft_setup["root"] / "tokenizer")
    p = run_sft(base_overrides(sft_setup, rd))
    assert p.stdout.count("nothing to do") == 2
