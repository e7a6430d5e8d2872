"""The stop request: SIGTERM (Slurm's cancel, a job scheduler), SIGUSR1 (Slurm's pre-emption warning) or SIGINT
(Ctrl-C, or torchrun forwarding one).

The handler only records the signal; the training loop checks it at a step boundary, all ranks agree through
one all-reduce (a signal may reach the ranks at different steps), then they save together and exit cleanly.
Shared by the DeepSpeed trainer (:mod:`train.engine.trainer`) and DPO (:mod:`train.runtime.hf_resume`).

Ctrl-C in both launch shapes:

- ``python -m train.X``: the terminal sends SIGINT to the process; the run saves at the next step boundary and
  exits 0 (relaunch to resume).
- ``torchrun``: the workers run in sessions of their own (``start_new_session=True``), so the terminal's SIGINT
  reaches only the agent; its handler (``torch.distributed.elastic.multiprocessing.api``) sends the *same* signal
  (SIGINT here, SIGTERM for a SIGTERM) to every worker's process group, waits ``--shutdown-timeout`` seconds
  (default 30, or ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``), then SIGKILLs them. The workers save and exit 0 within that
  time on a small model; torchrun itself then exits non-zero with a ``SignalException`` traceback. A save that
  takes longer (a large model) needs a larger ``--shutdown-timeout``, or SIGTERM sent to the workers directly.

A second Ctrl-C aborts at once: it raises ``KeyboardInterrupt`` wherever the process is (also mid-save; a
checkpoint is written atomically, so the previous one stays the resume point). Under torchrun the agent dies on
the second Ctrl-C and its workers with it (``train.runtime.launcher_death``).
"""
from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# Written with os.write: a handler runs between two bytecodes of the main thread, which may be inside print().
_FIRST_INTERRUPT = (b"\n[stop] Ctrl-C: saving a checkpoint at the next step boundary, then exiting; "
                    b"press Ctrl-C again to abort without saving\n")


class StopSignal:
    """``with StopSignal() as sig:`` ... ``sig.raised`` is True once a stop signal arrived in the block; a second
    SIGINT in the block raises ``KeyboardInterrupt``."""

    def __init__(self):
        self.raised = False
        self._interrupts = 0
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt
            os.write(2, _FIRST_INTERRUPT)
        self.raised = True

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False
