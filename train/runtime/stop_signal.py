"""The stop request: SIGTERM (torchrun forwards it on shutdown) or SIGUSR1 (Slurm's pre-emption warning).

The handler only records the signal; the training loop checks it at a step boundary, all ranks agree through
one all-reduce (a signal may reach the ranks at different steps), then they save together and exit cleanly.
Shared by the DeepSpeed trainer (:mod:`train.engine.trainer`) and DPO (:mod:`train.runtime.hf_resume`).
"""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignal:
    """``with StopSignal() as sig:`` ... ``sig.raised`` is True once a stop signal arrived in the block."""

    def __init__(self):
        self.raised = False
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False
