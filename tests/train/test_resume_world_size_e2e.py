"""A ZeRO-2 run killed (SIGKILL) after a checkpoint resumes on another number of ranks (2 -> 1 and 1 -> 2)
through DeepSpeed's universal checkpoint and logs the losses of a 2-rank run that never stopped (CPU, gloo,
torchrun; equal up to the order of floating-point reductions, which changes with the number of ranks)."""
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

from train.engine import checkpoint
from data.dir_lock import RunDirLockedError, RunLock
from tests.train.builders import make_data

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=4",
        "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.sliding_window=8",
        "data.seq_len=32", "trainer.progress_bar=false", "trainer.eval_every=0", "data.global_batch_tokens=128",
        "data.micro_batch_rows=1", "trainer.max_steps=6", "trainer.save_every=2", "trainer.log_every=1",
        "trainer.export=false", "deepspeed.zero_stage=2"]


def command(run_dir: Path, shards: Path, nproc: int) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
            "-m", "train.pretrain", "run.name=ws", f"run.dir={run_dir}",
            f"data.sources=[{{path:{shards},weight:1.0}}]", *TINY]


def env() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run(run_dir: Path, shards: Path, nproc: int) -> subprocess.CompletedProcess:
    p = subprocess.run(command(run_dir, shards, nproc), cwd=REPO, env=env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p


def kill_after_first_checkpoint(run_dir: Path, shards: Path, nproc: int) -> None:
    proc = subprocess.Popen(command(run_dir, shards, nproc), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while not (run_dir / "checkpoints" / "latest").exists():
            assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
            time.sleep(0.05)
        # SIGKILL to the launcher: its ranks die with it (train/runtime/launcher_death.py), as after an OOM kill.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 30
    while (run_dir / "run.lock").exists() and _locked(run_dir / "run.lock") and time.time() < deadline:
        time.sleep(0.2)
    assert not (run_dir / "DONE").exists()


def _locked(lock_file: Path) -> bool:
    try:
        with RunLock(lock_file):
            return False
    except RunDirLockedError:
        return True


def losses(run_dir: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows]


def assert_same_run(got, want):
    assert [s for s, _, _ in got] == [s for s, _, _ in want]
    np.testing.assert_allclose([x[1:] for x in got], [x[1:] for x in want], rtol=2e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("world_size")
    shards = make_data(root / "data")
    run(root / "ref", shards, nproc=2)
    return root, shards, losses(root / "ref")


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_zero2_resume_on_other_world_size_continues_the_run(reference, before, after):
    root, shards, want = reference
    rd = root / f"killed_{before}_to_{after}"
    kill_after_first_checkpoint(rd, shards, before)
    tag = checkpoint.latest_tag(rd / "checkpoints")
    assert checkpoint.saved_partitions(rd / "checkpoints" / tag) == before
    p = run(rd, shards, after)
    assert f"resumed {rd} at step {int(tag[4:])}" in p.stdout
    assert "loading it as a DeepSpeed universal checkpoint" in p.stdout
    assert_same_run(losses(rd), want)
    # The checkpoints written after the resume are partitioned over the new world size.
    assert checkpoint.saved_partitions(rd / "checkpoints" / checkpoint.latest_tag(rd / "checkpoints")) == after


def test_same_world_size_needs_no_universal_config(tmp_path):
    ck = tmp_path / "checkpoints"
    tag_dir = ck / checkpoint.tag_for(4)
    tag_dir.mkdir(parents=True)
    (tag_dir / "trainer_state.pt").write_bytes(b"x")
    for r in range(2):
        (tag_dir / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"x")
    (ck / "latest").write_text(tag_dir.name)
    base = {"zero_optimization": {"stage": 2}}
    assert checkpoint.with_resume_config(base, ck, 2) == base
    assert checkpoint.with_resume_config(base, ck, 1)["checkpoint"] == {"load_universal": True}
    assert checkpoint.with_resume_config(base, tmp_path / "none", 1) == base
