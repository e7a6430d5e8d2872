"""A 2-rank run killed with SIGKILL after a checkpoint and relaunched logs exactly the losses of a run that
never stopped (CPU, fp32, torchrun, tiny model and shards made here); plus the checkpoint/metrics helpers."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from train import checkpoint
from train.metrics import resolve_wandb_mode, resumable_logger, truncate_after
from train.config import WandbConfig
from train.run_dir import RunDir
from tests.train.test_trainer_runs import make_data

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=8",
        "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.sliding_window=8",
        "data.seq_len=32", "trainer.progress_bar=false", "trainer.eval_every=0", "data.global_batch_tokens=128",
        "data.micro_batch_rows=1", "trainer.max_steps=6", "trainer.save_every=2", "trainer.log_every=1",
        "trainer.export=false", "deepspeed.zero_stage=1"]


def command(run_dir, shard_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
            "-m", "train.pretrain", "run.name=r", f"run.dir={run_dir}",
            f"data.sources=[{{path:{shard_dir},weight:1.0}}]", *TINY]


def env():
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def descendants(pid):
    """pid and all its descendants (torchrun starts its workers in new sessions, so killpg misses them)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            todo.extend(int(c) for c in task.read_text().split())
    return out


def kill_tree(pid):
    for p in descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def losses(run_dir):
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows]


@pytest.mark.slow
def test_sigkill_then_relaunch_reproduces_losses(tmp_path):
    shards = make_data(tmp_path / "data")
    ref = tmp_path / "ref"
    p = subprocess.run(command(ref, shards), cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]

    rd = tmp_path / "killed"
    proc = subprocess.Popen(command(rd, shards), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while not (rd / "checkpoints" / "latest").exists():
            assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
            time.sleep(0.05)
        kill_tree(proc.pid)  # torchrun and both ranks, no chance to clean up
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    time.sleep(1.0)  # let the kernel reap the killed ranks before checking the directory
    assert not (rd / "DONE").exists()
    p = subprocess.run(command(rd, shards), cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "resumed" in p.stdout
    assert losses(rd) == losses(ref)  # exact: same data order, RNG, optimizer and scheduler state


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
    """Pretraining, SFT and DPO share train.metrics.resumable_logger: a relaunch into a run directory continues the
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
