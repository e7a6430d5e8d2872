"""One writer per run directory: a second run on a held directory is refused with a message naming the holder,
the lock dies with its holder, and the ranks of a torchrun whose launcher was SIGKILLed exit within seconds."""
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
from tests.train.test_trainer_runs import make_data

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; sys.path.insert(0, {repo!r}); from data.dir_lock import RunLock; "
        "l = RunLock({path!r}); l.acquire(); print('held', flush=True); time.sleep(600)")


def _holder(lock_file: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), path=str(lock_file))],
                            stdout=subprocess.PIPE, text=True)
    # Importing train.run_lock imports DeepSpeed (train.distributed), whose logger may print to stdout first.
    seen = []
    while (line := proc.stdout.readline()) and line.strip() != "held":
        seen.append(line.strip())
    assert line.strip() == "held", f"the lock holder exited before taking the lock: {seen}"
    return proc


def test_held_directory_is_refused_naming_the_holder_until_it_dies(tmp_path):
    lock_file = tmp_path / "run" / "run.lock"
    proc = _holder(lock_file)
    try:
        with pytest.raises(RunDirLockedError, match=rf"pid {proc.pid} on host {socket.gethostname()}"):
            RunLock(lock_file).acquire()
    finally:
        proc.kill()  # SIGKILL: no clean-up, the kernel drops the lock
        proc.wait()
    with RunLock(lock_file) as lock:
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with pytest.raises(RunDirLockedError):  # also within one process: one holder per directory
            RunLock(lock_file).acquire()
        assert lock._fd is not None
    with RunLock(lock_file):  # released by the context manager
        pass


def test_parent_death_signal_kills_an_orphan(tmp_path):
    """The mechanism alone: a grandchild armed with PR_SET_PDEATHSIG dies when its parent is SIGKILLed."""
    child_code = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); "
                  "from train.launcher_death import exit_with_parent; exit_with_parent(); print(1, flush=True); "
                  "time.sleep(600)")
    script = (f"import sys, time, subprocess; c = subprocess.Popen([sys.executable, '-c', {child_code!r}], "
              "stdout=subprocess.PIPE, start_new_session=True); c.stdout.readline(); print(c.pid, flush=True); "
              "time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert _wait_gone([child], 10), "the armed child outlived its parent"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (PID 1 in a container may not reap it)


def _wait_gone(pids, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


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
        assert _wait_gone(ranks, 10), "ranks kept training after their torchrun launcher died"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in ranks:
            if _alive(pid):
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
