"""One writer per run directory: rank 0 holds ``run.dir/run.lock`` (``data.dir_lock.RunLock``) for as long as the
run trains, and every rank stops if it cannot."""
from __future__ import annotations

import contextlib
from pathlib import Path

from data.dir_lock import RunDirLockedError, RunLock
from train.runtime.distributed import DistInfo, any_rank


@contextlib.contextmanager
def hold_run_dir(lock_file: Path, dist_info: DistInfo):
    """Collective: rank 0 (the only writer) holds ``lock_file`` for the block; every rank raises if it is taken."""
    lock, error = RunLock(lock_file, elsewhere="another run.dir"), None
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
