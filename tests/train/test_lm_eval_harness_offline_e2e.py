"""lm-evaluation-harness (``--model hf`` semantics) runs offline on a SambaY export with our local tasks.

The slow end-to-end tests; the fast ones are in test_lm_eval_harness_offline.py."""
import json

import pytest

from tests.train.builders import build_harness_tiny


@pytest.mark.slow
def test_lm_eval_runs_offline_on_export(tmp_path, monkeypatch):
    from train.lm_harness import PPL_TASK, REASONING_TASK, main

    data, export = build_harness_tiny(tmp_path)
    monkeypatch.chdir(tmp_path)  # task data paths are absolute: any working directory works
    out = tmp_path / "lm_eval.json"
    assert main(["--model-path", str(export), "--data-dir", str(data), "--output", str(out), "--limit", "2",
                 "--max-gen-toks", "8", "--batch-size", "2"]) == 0
    results = json.loads(out.read_text())
    assert results[REASONING_TASK]["sample_len"] == 2
    assert 0.0 <= results[REASONING_TASK]["exact_match,boxed"] <= 1.0
    assert results[PPL_TASK]["bits_per_byte,none"] > 0
