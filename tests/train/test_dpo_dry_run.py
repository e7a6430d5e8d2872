"""``train.dpo`` with ``trainer.dry_run=true``: every input read and checked, the DeepSpeed / TRL configuration
built and printed, and nothing written (no run directory, no lock, no file anywhere under the test's tree)."""
import json
import os

import pytest

from tests.train.builders import dpo_cfg, run_dpo


def _tree(root):
    """Every path under ``root`` with its size and modification time: what a write would change."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


def _dry(data, export, run_dir, **dpo):
    cfg = dpo_cfg(data, export, run_dir, **dpo)
    cfg.trainer.dry_run = True
    return cfg


@pytest.mark.parametrize("stage", [0, 2])
def test_dry_run_builds_the_config_and_writes_nothing(dpo_tiny, tmp_path, monkeypatch, capsys, stage):
    data, export = dpo_tiny
    monkeypatch.chdir(tmp_path)  # a relative write (cache, logs) would land here
    before_inputs = _tree(data.parent)
    cfg = _dry(data, export, tmp_path / "run")
    cfg.deepspeed.zero_stage = stage
    cfg.deepspeed.precision = "bf16"
    summary = run_dpo(cfg)
    assert summary["dry_run"] is True
    assert summary["offline_pairs"] == 16 and summary["heldout_pairs"] == 12 and summary["params"] > 0
    assert summary["heldout_longest_tokens"] > 0 and summary["precision"] == "torch.bfloat16"
    if stage == 0:  # no DeepSpeed: bf16 is accelerate's autocast over fp32 weights
        assert summary["deepspeed"] is None and summary["hf_bf16"] is True
    else:  # DeepSpeed's torch_autocast, never its bf16 mode (and then not HF's bf16 flag either)
        ds = summary["deepspeed"]
        assert ds["zero_optimization"]["stage"] == 2 and ds["torch_autocast"]["dtype"] == "bfloat16"
        assert "bf16" not in ds and summary["hf_bf16"] is False
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["dry_run"] is True
    assert sorted(os.listdir(tmp_path)) == []  # no run directory, no run.lock, nothing in the working directory
    assert _tree(data.parent) == before_inputs  # the data and the export are only read


def test_dry_run_with_a_missing_preference_file_fails_naming_it(dpo_tiny, tmp_path, monkeypatch):
    data, export = dpo_tiny
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere" / "heldout.jsonl"
    with pytest.raises(FileNotFoundError, match=f"dpo.eval_data: {missing} does not exist"):
        run_dpo(_dry(data, export, tmp_path / "run", eval_data=str(missing)))
    assert sorted(os.listdir(tmp_path)) == []


def test_dry_run_with_missing_prepared_data_fails_naming_the_file(dpo_tiny, tmp_path, monkeypatch):
    """The default paths come from the prepared-data layout (data.layout.PreparedData)."""
    data, export = dpo_tiny
    partial = tmp_path / "data"
    (partial / "preference").mkdir(parents=True)
    (partial / "preference" / "heldout.jsonl").write_bytes((data / "preference" / "heldout.jsonl").read_bytes())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"dpo.data_dir: {partial / 'preference' / 'train.jsonl'}"):
        run_dpo(_dry(partial, export, tmp_path / "run", check_tokenizer=False))
    cfg = _dry(partial, export, tmp_path / "run", check_tokenizer=False)
    cfg.dpo.on_policy.enabled, cfg.dpo.on_policy.mix = True, "replace"  # no offline pairs needed, problems are
    with pytest.raises(FileNotFoundError, match=f"dpo.on_policy.problems: {partial / 'reasoning' / 'train.jsonl'}"):
        run_dpo(cfg)
    assert sorted(os.listdir(tmp_path)) == ["data"] and not (tmp_path / "run").exists()
