"""The checkpoint and metrics helpers resuming relies on: pruning, RNG state, metrics truncation, config changes,
the W&B run a relaunch continues. The SIGKILL-and-relaunch run itself is in test_checkpoint_resume_sigkill_e2e.py."""
import json

import numpy as np
import pytest

from train.engine import checkpoint
from train.runtime.metrics import resolve_wandb_mode, resumable_logger, truncate_after
from train.config import WandbConfig
from train.runtime.run_dir import RunDir


def test_prune_keeps_last_and_latest(tmp_path):
    ck = tmp_path / "checkpoints"
    for s in (2, 4, 6, 8):
        (ck / checkpoint.tag_for(s)).mkdir(parents=True)
        (ck / checkpoint.tag_for(s) / "trainer_state.pt").write_bytes(b"x")
    (ck / "latest").write_text("step00000008")
    checkpoint.prune(ck, keep_last=2)
    assert sorted(p.name for p in ck.iterdir() if p.is_dir()) == ["step00000006", "step00000008"]
    assert checkpoint.latest_tag(ck) == "step00000008"
    (ck / "latest").write_text("step00000010")
    with pytest.raises(FileNotFoundError, match="step00000010"):
        checkpoint.latest_tag(ck)


def test_rng_state_round_trip():
    import random

    import torch

    state = checkpoint.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_metrics_truncated_to_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7)))
    truncate_after(path, 4)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_config_change_keeps_old_config(tmp_path):
    rd = RunDir(tmp_path)
    rd.create()
    rd.write_config("a: 1\n")
    rd.write_config("a: 1\n")
    assert not (tmp_path / "config.prev-1.yaml").exists()
    rd.write_config("a: 2\n")
    assert (tmp_path / "config.prev-1.yaml").read_text() == "a: 1\n"
    assert rd.config.read_text() == "a: 2\n"


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert resolve_wandb_mode(WandbConfig(mode="auto")) == "offline"
    assert resolve_wandb_mode(WandbConfig(mode="online")) == "offline"
    assert resolve_wandb_mode(WandbConfig(mode="disabled")) == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_wandb_mode(WandbConfig(mode="auto")) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode(WandbConfig(mode="online")) == "disabled"
    with pytest.raises(ValueError, match="wandb.mode"):
        monkeypatch.delenv("WANDB_MODE")
        resolve_wandb_mode(WandbConfig(mode="sometimes"))


def test_relaunch_continues_the_same_wandb_run(monkeypatch, tmp_path):
    """Pretraining, SFT and DPO share train.runtime.metrics.resumable_logger: a relaunch into a run directory continues the
    W&B run of the earlier launch (W&B offline here: no network, the run lives under the run dir)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rd = RunDir(tmp_path / "run")
    rd.create()
    kw = dict(enabled=True, wandb_cfg=WandbConfig(mode="offline"), run_name="r", config={}, total_steps=2,
              start_step=0, progress_bar=False)
    first = resumable_logger(rd, **kw)
    first.close()
    assert first.wandb_id and rd.wandb_id.read_text() == first.wandb_id
    again = resumable_logger(rd, **kw)  # no checkpoint id: the run directory's
    again.close()
    assert again.wandb_id == first.wandb_id
    from_checkpoint = resumable_logger(rd, **kw, wandb_id="ckpt1234")  # a checkpoint's id wins
    from_checkpoint.close()
    assert from_checkpoint.wandb_id == "ckpt1234" and rd.wandb_id.read_text() == "ckpt1234"
