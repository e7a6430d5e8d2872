"""Ctrl-C on a tiny pretraining run: SIGINT saves a checkpoint and exits 0 like SIGTERM (plain ``python -m`` and
under torchrun, whose agent forwards the SIGINT to its workers), and a second SIGINT aborts without saving.

The slow end-to-end tests; the fast ones are in test_stop_signal.py."""
import signal
import subprocess
import time

import pytest

from tests.train.builders import REPO, command, env, free_port

pytestmark = pytest.mark.slow
# Long enough that a signal sent once step 1 is logged lands mid-run on a loaded machine.
OVERRIDES = ["trainer.max_steps=200", "trainer.log_every=1", "trainer.save_every=1000",
             "data.global_batch_tokens=128", "trainer.export=false"]


def _start_and_wait_for_a_step(cmd, rd):
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (rd / "metrics.jsonl").exists() or not (rd / "metrics.jsonl").read_text().strip():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate()[1][-3000:])
        time.sleep(0.2)
    return proc


def _saved_step(rd):
    return int((rd / "checkpoints" / "latest").read_text().removeprefix("step"))


def _interrupt(proc, times: int, gap: float = 0.1):
    try:
        for i in range(times):
            if i:
                time.sleep(gap)
            proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_saves_a_checkpoint_and_exits_0(pretrain_shards, tmp_path):
    rd = tmp_path / "plain"
    out, err = _interrupt(_start_and_wait_for_a_step(command(rd, pretrain_shards, OVERRIDES), rd), 1)
    assert "stop signal: saved step" in out, err[-3000:]
    assert "press Ctrl-C again to abort" in err
    assert 1 <= _saved_step(rd) < 200 and not (rd / "DONE").exists()


def test_ctrl_c_to_torchrun_reaches_the_workers_which_save(pretrain_shards, tmp_path):
    """The terminal's SIGINT reaches only the agent (workers have sessions of their own); the agent sends SIGINT
    to each worker and waits for it (--shutdown-timeout), then exits non-zero itself (SignalException)."""
    rd = tmp_path / "torchrun"
    python, *args = command(rd, pretrain_shards, OVERRIDES)  # python -m train.pretrain ...
    cmd = [python, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}", *args]
    proc = _start_and_wait_for_a_step(cmd, rd)
    out, err = _interrupt(proc, 1)
    assert "stop signal: saved step" in out, err[-3000:]
    assert 1 <= _saved_step(rd) < 200 and not (rd / "DONE").exists()
    assert proc.returncode != 0 and "SignalException" in err  # torchrun's own exit, after its worker's clean one


# Steps of 64 micro-batches (about a second or more each): both Ctrl-Cs, 0.1 s apart, land inside one step, before
# the step boundary where the first would save (with one-micro-batch steps the first Ctrl-C's save and exit could
# finish before the second arrived, which then only interrupted the interpreter's exit).
LONG_STEPS = [o for o in OVERRIDES if not o.startswith("data.global_batch_tokens")] + ["data.global_batch_tokens=8192"]


def test_second_ctrl_c_aborts(pretrain_shards, tmp_path):
    rd = tmp_path / "twice"
    proc = _start_and_wait_for_a_step(command(rd, pretrain_shards, LONG_STEPS), rd)
    started = time.time()
    _, err = _interrupt(proc, 2)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-3000:]
    assert time.time() - started < 60
    assert not (rd / "DONE").exists() and not (rd / "checkpoints" / "latest").exists()
