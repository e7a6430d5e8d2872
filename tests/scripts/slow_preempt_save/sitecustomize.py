"""Test-only: make the pretraining pre-emption save slow, from outside the product
(tests/scripts/test_slurm_local_e2e.py).

Put this folder on PYTHONPATH and set SAMBAY_TEST_SLOW_PREEMPT_SAVE_S=<seconds>: Python imports
``sitecustomize`` at start-up, and this one wraps ``train.engine.trainer.Trainer._save_on_signal`` (when that module is
first imported) to sleep first, emulating the minutes a multi-GB ZeRO save takes, so the Slurm test shows that
the template gives such a save its time. Nothing is patched while the variable is unset or 0.
"""
import functools
import importlib.abc
import importlib.util
import os
import sys
import time

SLOW_SAVE_ENV = "SAMBAY_TEST_SLOW_PREEMPT_SAVE_S"
TARGET = "train.engine.trainer"


def _slowed(save_on_signal, delay: float):
    @functools.wraps(save_on_signal)
    def slow_save_on_signal(self, *args, **kwargs):
        print(f"[checkpoint] {SLOW_SAVE_ENV}={delay:g}: emulating a slow save", flush=True)
        time.sleep(delay)
        return save_on_signal(self, *args, **kwargs)

    return slow_save_on_signal


class _PatchOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``train.engine.trainer`` with the other finders, then wraps the method once the module has run."""

    def __init__(self, delay: float):
        self.delay = delay
        self.spec = None

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET or self.spec is not None:
            return None
        sys.meta_path.remove(self)  # find the real module with the remaining finders
        try:
            self.spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if self.spec is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=self.spec.origin)

    def create_module(self, spec):
        return self.spec.loader.create_module(self.spec)

    def exec_module(self, module):
        module.__spec__ = self.spec
        module.__file__ = self.spec.origin
        self.spec.loader.exec_module(module)
        module.Trainer._save_on_signal = _slowed(module.Trainer._save_on_signal, self.delay)


def _install() -> None:
    delay = float(os.environ.get(SLOW_SAVE_ENV, "0") or 0)
    if delay > 0:
        sys.meta_path.insert(0, _PatchOnImport(delay))


_install()
