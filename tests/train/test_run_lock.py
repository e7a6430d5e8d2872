"""One writer per run directory: a second run on a held directory is refused with a message naming the holder,
and the lock dies with its holder; an orphan dies with its parent. The torchrun whose launcher is SIGKILLed is in
test_run_lock_e2e.py."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from data.dir_lock import RunDirLockedError, RunLock
from tests.train.builders import wait_gone

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; sys.path.insert(0, {repo!r}); from data.dir_lock import RunLock; "
        "l = RunLock({path!r}); l.acquire(); print('held', flush=True); time.sleep(600)")


def _holder(lock_file: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), path=str(lock_file))],
                            stdout=subprocess.PIPE, text=True)
    # Importing train.runtime.run_lock imports DeepSpeed (train.runtime.distributed), whose logger may print to stdout first.
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
                  "from train.runtime.launcher_death import exit_with_parent; exit_with_parent(); print(1, flush=True); "
                  "time.sleep(600)")
    script = (f"import sys, time, subprocess; c = subprocess.Popen([sys.executable, '-c', {child_code!r}], "
              "stdout=subprocess.PIPE, start_new_session=True); c.stdout.readline(); print(c.pid, flush=True); "
              "time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert wait_gone([child], 10), "the armed child outlived its parent"


