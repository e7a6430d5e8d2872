"""One writer per run directory: a second run on a held directory is refused with a message naming the holder,
the lock dies with its holder, and the ranks of a torchrun whose launcher was SIGKILLed exit within seconds.

The slow end-to-end tests; the fast ones are in test_run_lock.py."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.dir_lock import RunDirLockedError, RunLock
from tests.train.builders import REPO, alive, make_data, wait_gone


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").glob("*/children") for c in task.read_text().split()]


def _pretrain_args(run_dir: Path, shards: Path) -> list[str]:
    return ["-m", "train.pretrain", "run.name=lock", f"run.dir={run_dir}",
            f"data.sources=[{{path:{shards},weight:1.0}}]", "model.hidden_size=32", "model.intermediate_size=64",
            "model.num_hidden_layers=4", "model.num_attention_heads=4", "model.num_key_value_heads=2",
            "model.sliding_window=8", "data.seq_len=32", "data.global_batch_tokens=128", "data.micro_batch_rows=1",
            "trainer.progress_bar=false", "trainer.eval_every=0", "trainer.max_steps=100000",
            "trainer.save_every=0", "trainer.log_every=1", "trainer.export=false"]


@pytest.mark.slow
def test_second_run_refused_and_ranks_exit_when_launcher_is_killed(tmp_path):
    shards = make_data(tmp_path / "data")
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                 f"--master_port={port}", *_pretrain_args(run_dir, shards)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks: list[int] = []
    try:
        deadline = time.time() + 400
        while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().strip()):
            assert launcher.poll() is None and time.time() < deadline, "the first run ended before training"
            time.sleep(0.1)
        ranks = _children(launcher.pid)
        assert len(ranks) == 2
        holder = json.loads((run_dir / "run.lock").read_text())
        assert holder["pid"] in ranks  # rank 0 holds it

        second = subprocess.run([sys.executable, *_pretrain_args(run_dir, shards)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 4, second.stderr[-3000:]
        assert f"is in use by another run: pid {holder['pid']} on host {socket.gethostname()}" in second.stderr
        assert launcher.poll() is None  # the refused run left the live one alone

        launcher.send_signal(signal.SIGKILL)  # the launcher alone, as the OOM killer would
        launcher.wait(timeout=30)
        assert wait_gone(ranks, 10), "ranks kept training after their torchrun launcher died"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in ranks:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    # The kernel releases the dead rank 0's lock once its last thread has exited (the leader may show as a
    # zombie a moment before the others are gone).
    assert _wait_lock_free(run_dir / "run.lock", 10), "the lock outlived its holder"


def _wait_lock_free(lock_file: Path, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with RunLock(lock_file):
                return True
        except RunDirLockedError:
            time.sleep(0.1)
    return False
