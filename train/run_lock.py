"""One writer per run directory: an exclusive lock held by the run's main process for as long as it trains.

The lock is ``fcntl.flock`` on ``<run dir>/run.lock``. The kernel drops it when its holder exits, however it
exits (SIGKILL, the OOM killer), so a stale lock file never blocks a relaunch and there is nothing to clean
up. The file records the holder (pid, host, start time) so a refused launch can name it. ``flock`` is
per-host on some network file systems; on those, two launches on different nodes are not kept apart.

Why flock and not a pid file: a pid file outlives a killed holder and cannot tell a reused pid from the
run; the kernel-held lock has neither problem.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from train.distributed import DistInfo, any_rank


class RunDirLockedError(RuntimeError):
    """Another live process holds the run directory."""

    exit_code = 4


def describe_holder(lock_file: Path) -> str:
    """``pid P on host H (since T)`` from the lock file, or what is known when it cannot be read."""
    try:
        info = json.loads(lock_file.read_text())
        return f"pid {info['pid']} on host {info['host']} (since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process whose pid and host were not recorded yet"


class RunLock:
    """``with RunLock(run_dir / "run.lock"):`` holds the directory; raises :class:`RunDirLockedError` if taken."""

    def __init__(self, lock_file: Path):
        self.lock_file = Path(lock_file)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC: Python fds are not inherited
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirLockedError(
                f"{self.lock_file.parent} is in use by another run: {describe_holder(self.lock_file)} holds "
                f"{self.lock_file}. Stop that run first (or use another run.dir); the lock goes away when it "
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


@contextlib.contextmanager
def hold_run_dir(lock_file: Path, dist_info: DistInfo):
    """Collective: rank 0 (the only writer) holds ``lock_file`` for the block; every rank raises if it is taken."""
    lock, error = RunLock(lock_file), None
    if dist_info.is_main:
        try:
            lock.acquire()
        except RunDirLockedError as e:
            error = e
    if any_rank(error is not None, dist_info.device):
        raise error if error is not None else RunDirLockedError(
            f"rank 0 could not lock {lock_file}: another run holds {lock_file.parent} (see rank 0's message)")
    try:
        yield lock
    finally:
        lock.release()
