"""Checkpoints: DeepSpeed engine state + trainer state + per-rank RNG states, with an atomic ``latest`` pointer.

A checkpoint is ``checkpoints/step00000042/`` holding DeepSpeed's files (model, optimizer, LR scheduler),
``trainer_state.pt`` (step, tokens, loader position, W&B run id; rank 0) and ``rng_rank<R>.pt`` (python,
numpy, torch and CUDA RNG states; every rank). ``checkpoints/latest`` names the newest *complete*
checkpoint: it is replaced (write temp, rename) only after every rank finished writing (barrier), so a
crash mid-save leaves the previous checkpoint as the resume point. DeepSpeed's ``load_checkpoint`` and
``zero_to_fp32`` read the same ``latest`` file.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.atomic import atomic_write_text
from train.distributed import DistInfo, barrier

_TAG_RE = re.compile(r"^step(\d{8})$")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag named by ``latest``, or None when there is no complete checkpoint."""
    pointer = ckpt_dir / "latest"
    if not pointer.exists():
        return None
    tag = pointer.read_text().strip()
    if not (ckpt_dir / tag / "trainer_state.pt").exists():
        raise FileNotFoundError(f"{pointer} names {tag!r} but {ckpt_dir / tag / 'trainer_state.pt'} is missing")
    return tag


def save(engine, ckpt_dir: Path, step: int, trainer_state: dict[str, Any], dist_info: DistInfo,
         keep_last: int) -> str:
    """Save on all ranks (collective); returns the tag. ``latest`` moves only once every rank is done."""
    tag = tag_for(step)
    target = ckpt_dir / tag
    if dist_info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if target.exists() and latest_tag_or_none(ckpt_dir) != tag:
            shutil.rmtree(target)  # a partial save from a killed run: never referenced by `latest`
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={}, save_latest=False)
    _atomic_torch_save(rng_state(), target / f"rng_rank{dist_info.rank}.pt")
    if dist_info.is_main:
        _atomic_torch_save(trainer_state, target / "trainer_state.pt")
    barrier()
    if dist_info.is_main:
        atomic_write_text(ckpt_dir / "latest", tag, overwrite=True)
        prune(ckpt_dir, keep_last)
    barrier()
    return tag


def latest_tag_or_none(ckpt_dir: Path) -> str | None:
    pointer = ckpt_dir / "latest"
    return pointer.read_text().strip() if pointer.exists() else None


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (never the one ``latest`` names)."""
    keep_last = max(1, keep_last)
    current = latest_tag_or_none(ckpt_dir)
    tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and _TAG_RE.match(p.name))
    for tag in tags[:-keep_last]:
        if tag != current:
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)


def load(engine, ckpt_dir: Path, dist_info: DistInfo) -> dict[str, Any] | None:
    """Restore the newest complete checkpoint into ``engine`` and this rank's RNGs; None when there is none.

    Returns the trainer state. With a different world size than at save time, ranks without a saved RNG
    state keep their seeded RNGs (the data order does not depend on them).
    """
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    rng_file = ckpt_dir / tag / f"rng_rank{dist_info.rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return torch.load(ckpt_dir / tag / "trainer_state.pt", weights_only=False)
