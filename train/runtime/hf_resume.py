"""Pre-emption and resume for runs driven by the HF / TRL ``Trainer`` (DPO): complete checkpoints only, and
SIGTERM / SIGUSR1 / SIGINT handled as in pretraining (agreed save at a step boundary, clean exit).

The Trainer writes ``checkpoint-N/`` in place and ``get_last_checkpoint`` takes the highest N without any
completeness check, so a kill during a save would make every relaunch crash on a half-written checkpoint.
Here a checkpoint counts only once every rank has finished writing it: :class:`MarkCompleteCheckpoints`
writes ``checkpoint-N/COMPLETE`` (atomically, rank 0, after a barrier) from the ``on_save`` callback, which
the Trainer calls after its save. :func:`resume_checkpoint` picks the newest complete one and removes newer
incomplete ones (with a warning), so the Trainer never writes into a partial directory.
Keep ``save_total_limit`` >= 2: the Trainer deletes older checkpoints right after writing a new one, before
``on_save`` runs, so with a limit of 1 a kill in that instant leaves no complete checkpoint.
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from data.atomic import atomic_write_text
from train.runtime.distributed import any_rank, barrier
from train.runtime.stop_signal import StopSignal

COMPLETE = "COMPLETE"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_by_step(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N`` directory, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return sorted(found)


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def resume_checkpoint(ckpt_dir: Path, is_main: bool) -> Path | None:
    """The newest complete checkpoint (None: start fresh). Collective: rank 0 removes newer incomplete ones."""
    found = checkpoints_by_step(ckpt_dir)
    complete = [p for _, p in found if is_complete(p)]
    latest = complete[-1] if complete else None
    latest_step = int(_CKPT_RE.match(latest.name).group(1)) if latest else -1
    for step, path in found:
        if step > latest_step and not is_complete(path) and is_main:
            print(f"[resume] WARNING: {path} has no {COMPLETE} marker (a save was interrupted); ignoring and "
                  f"removing it, resuming from {latest or 'the start'}", file=sys.stderr, flush=True)
            shutil.rmtree(path, ignore_errors=True)
    barrier()
    return latest


def step_of(checkpoint: Path | None) -> int | None:
    return int(_CKPT_RE.match(checkpoint.name).group(1)) if checkpoint is not None else None


class MarkCompleteCheckpoints(TrainerCallback):
    """Writes ``checkpoint-N/COMPLETE`` once every rank has finished saving checkpoint N."""

    def __init__(self, ckpt_dir: Path, is_main: bool):
        self.ckpt_dir, self.is_main = Path(ckpt_dir), is_main

    def on_save(self, args, state, control, **kwargs):
        barrier()  # every rank's shards (ZeRO) are on disk
        path = self.ckpt_dir / f"checkpoint-{state.global_step}"
        if self.is_main:
            if not path.is_dir():
                raise FileNotFoundError(f"the Trainer reported saving {path}, but it does not exist")
            atomic_write_text(path / COMPLETE, f"{state.global_step}\n", overwrite=True)
        barrier()


class StopOnSignal(TrainerCallback):
    """SIGTERM / SIGUSR1 / SIGINT (``train.runtime.stop_signal``) during ``trainer.train()``: every rank saves at
    the same step boundary, then stops.

    Use as a context manager around ``trainer.train()`` (it installs the handlers) and pass it in the
    Trainer's callbacks. ``stopped`` tells the caller the run was pre-empted (no export, no DONE).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.stopped = False
        self._signal = StopSignal()

    def __enter__(self) -> "StopOnSignal":
        self._signal.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        return self._signal.__exit__(*exc)

    def on_step_end(self, args, state, control, **kwargs):
        # One tiny all-reduce per optimizer step: a signal may reach the ranks at different steps.
        if any_rank(self._signal.raised, self.device):
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control
