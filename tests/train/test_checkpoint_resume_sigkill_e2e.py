"""A 2-rank run killed with SIGKILL after a checkpoint and relaunched logs exactly the losses of a run that
never stopped (CPU, fp32, torchrun, tiny model and shards made here); plus the checkpoint/metrics helpers.

The slow end-to-end tests; the fast ones are in test_checkpoint_resume_sigkill.py."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.builders import REPO, make_data


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
