"""``python -m data.prepare``: layout per docs/design.md, idempotence, strict overrides, the full demo (slow).

The slow end-to-end tests; the fast ones are in test_data_prepare.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from data.shards import read_manifest
from tests.data.builders import REPO, check_prepared_layout


@pytest.mark.slow
def test_demo_recipe_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "data.prepare", "--config-name", "demo", f"out_dir={out}"], cwd=REPO,
                       capture_output=True, text=True, timeout=240, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    check_prepared_layout(out)
    m = read_manifest(out / "pretrain")
    assert m["tokenizer"]["vocab_size"] == 4096 and m["dtype"] == "uint16" and m["splits"]["train"]["tokens"] > 1_000_000
    r2 = subprocess.run([sys.executable, "-m", "data.prepare", "--config-name", "demo", f"out_dir={out}"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0 and "nothing to do" in r2.stderr + r2.stdout
