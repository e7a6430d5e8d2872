"""Ranks die with their launcher: a torchrun worker whose agent died exits at once instead of training on.

torchrun starts every worker in a session of its own (``start_new_session=True``), so neither a terminal
hang-up nor a process-group kill reaches the ranks when the agent itself is SIGKILLed or OOM-killed; they
would keep training and writing the run directory beside any relaunch. Linux's ``PR_SET_PDEATHSIG`` has the
kernel send this process SIGKILL when its parent (the torchrun agent) exits. SIGKILL rather than SIGTERM:
a save needs every rank and the agent is gone, and checkpoints are atomic (the previous one stays the resume
point), so exiting at once is the safe choice.

Only torchrun workers (``TORCHELASTIC_RUN_ID`` set) arm it: a plain ``nohup python -m train.X &`` must
outlive the shell that started it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def exit_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` when the parent exits; True when armed (Linux only).

    If the parent is already gone (reparented before this call ran), exit now: the signal would never come.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    parent = os.getppid()
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")
    if parent == 1 or os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def exit_with_launcher() -> bool:
    """Arm :func:`exit_with_parent` for torchrun workers; a no-op (False) otherwise."""
    return exit_with_parent() if launched_by_torchrun() else False
