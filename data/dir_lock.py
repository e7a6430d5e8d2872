"""One writer per output directory: an exclusive lock held by the writing process for as long as it writes (a
training run's ``run.lock``, ``train/runtime/run_lock.py``; a data preparation's ``prepare.lock``, ``data/prepare.py``).
With ``wait=True`` a second process waits its turn instead of being refused (the shared corpus cache).

The lock is ``fcntl.flock`` on a file inside the directory. The kernel drops it when its holder exits, however
it exits (SIGKILL, the OOM killer), so a stale lock file never blocks a relaunch and there is nothing to clean
up. The file records the holder (pid, host, start time) so a refused launch can name it. ``flock`` is
per-host on some network file systems; on those, two launches on different nodes are not kept apart.

Why flock and not a pid file: a pid file outlives a killed holder and cannot tell a reused pid from the
run; the kernel-held lock has neither problem.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class RunDirLockedError(RuntimeError):
    """Another live process holds the directory."""

    exit_code = 4


def describe_holder(lock_file: Path) -> str:
    """``pid P on host H (since T)`` from the lock file, or what is known when it cannot be read."""
    try:
        info = json.loads(lock_file.read_text())
        return f"pid {info['pid']} on host {info['host']} (since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process whose pid and host were not recorded yet"


class RunLock:
    """``with RunLock(out_dir / "x.lock"):`` holds the directory; raises :class:`RunDirLockedError` if taken."""

    def __init__(self, lock_file: Path, elsewhere: str = "another directory", wait: bool = False):
        self.lock_file = Path(lock_file)
        self.elsewhere = elsewhere  # what the refusal suggests instead, e.g. "another run.dir"
        self.wait = wait  # block until the holder is done instead of refusing (a shared cache, not an output)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC: Python fds are not inherited
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirLockedError(
                f"{self.lock_file.parent} is in use by another run: {describe_holder(self.lock_file)} holds "
                f"{self.lock_file}. Stop that run first (or use {self.elsewhere}); the lock goes away when it "
                f"exits") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
