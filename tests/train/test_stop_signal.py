"""train.runtime.stop_signal: SIGINT (Ctrl-C) stops a run like SIGTERM / SIGUSR1, a second SIGINT aborts, and the
previous handlers come back. The runs sent SIGINT (plain python and torchrun) are in test_stop_signal_e2e.py."""
import os
import signal
import time

import pytest

from train.runtime.stop_signal import StopSignal


def _deliver(sig: int) -> None:
    """Send ``sig`` to this process and give the interpreter a moment to run its handler (main thread)."""
    os.kill(os.getpid(), sig)
    time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_each_stop_signal_is_recorded_not_fatal(sig):
    with StopSignal() as stop:
        assert not stop.raised
        _deliver(sig)
        assert stop.raised


def test_second_sigint_raises_keyboard_interrupt(capfd):
    with StopSignal() as stop:
        _deliver(signal.SIGINT)
        assert stop.raised
        assert "press Ctrl-C again to abort" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            _deliver(signal.SIGINT)


def test_repeated_sigterm_only_records():
    """SIGTERM is the scheduler's request, repeated or not (torchrun forwards one per shutdown): it never aborts."""
    with StopSignal() as stop:
        _deliver(signal.SIGTERM)
        _deliver(signal.SIGTERM)
        assert stop.raised


def test_sigint_after_sigterm_is_the_first_ctrl_c():
    """A Ctrl-C during a scheduler's stop is the user's first: it asks for the save, it does not abort it."""
    with StopSignal() as stop:
        _deliver(signal.SIGTERM)
        _deliver(signal.SIGINT)
        assert stop.raised
        with pytest.raises(KeyboardInterrupt):
            _deliver(signal.SIGINT)


def test_previous_handlers_are_restored():
    # Python's own Ctrl-C handler before the block, whatever an earlier test in this pytest-xdist worker left there
    # (a CI run once had another SIGINT handler at this point).
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
        with StopSignal():
            assert all(signal.getsignal(s) != h for s, h in before.items())
        assert {s: signal.getsignal(s) for s in before} == before
        with pytest.raises(KeyboardInterrupt):  # outside the block Ctrl-C is Python's again
            _deliver(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, outside)
