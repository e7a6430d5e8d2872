"""Checkpoints: DeepSpeed engine state + trainer state + per-rank RNG states, with an atomic ``latest`` pointer.

A checkpoint is ``checkpoints/step00000042/`` holding DeepSpeed's files (model, optimizer, LR scheduler),
``trainer_state.pt`` (step, tokens, loader position, W&B run id; rank 0) and ``rng_rank<R>.pt`` (python,
numpy, torch and CUDA RNG states; every rank). ``checkpoints/latest`` names the newest *complete*
checkpoint: it is replaced (write temp, rename) only after every rank finished writing (barrier), so a
crash mid-save leaves the previous checkpoint as the resume point. DeepSpeed's ``load_checkpoint`` and
``zero_to_fp32`` read the same ``latest`` file.

Resuming on another number of ranks: ZeRO (stage >= 1) partitions the optimizer state by data-parallel rank
and DeepSpeed refuses a partitioning of another size. When the newest checkpoint holds a different number of
partitions than the job has ranks, rank 0 converts it once with DeepSpeed's own converter
(``python -m deepspeed.checkpoint.ds_to_universal``) into ``<tag>/universal/`` (temp name, then rename) and the
engine is built with ``"checkpoint": {"load_universal": true}``, so every rank reads its new slice of the
fp32 weights and Adam moments from there. The data order does not depend on the world size (see
:mod:`data.loader`), so the run continues with the global batches it would have seen.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.atomic import atomic_write_text
from train.runtime.distributed import DistInfo, any_rank, barrier

_TAG_RE = re.compile(r"^step(\d{8})$")
UNIVERSAL = "universal"  # the subdirectory of a tag that holds its DeepSpeed universal-checkpoint copy


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


def saved_partitions(tag_dir: Path) -> int:
    """How many ZeRO optimizer partitions (data-parallel ranks) a DeepSpeed checkpoint holds; 0 without ZeRO."""
    return len(list(tag_dir.glob("*_optim_states.pt")))


def with_resume_config(ds_cfg: dict, ckpt_dir: Path, world_size: int) -> dict:
    """``ds_cfg`` plus what resuming ``ckpt_dir`` on ``world_size`` ranks needs; call before ``deepspeed.initialize``.

    Adds ``"checkpoint": {"load_universal": true}`` when the newest checkpoint was partitioned over another
    number of ranks; every rank reads the same files, so all ranks decide alike.
    """
    tag = latest_tag(ckpt_dir)
    saved = saved_partitions(ckpt_dir / tag) if tag is not None else 0
    if saved in (0, world_size):
        return ds_cfg
    return {**ds_cfg, "checkpoint": {**ds_cfg.get("checkpoint", {}), "load_universal": True}}


def convert_to_universal(tag_dir: Path) -> Path:
    """``tag_dir/universal``, made once by DeepSpeed's converter (temp directory, then rename); returns it.

    ``--inject_missing_state`` adds the (empty) universal-checkpoint metadata that DeepSpeed only writes for
    Megatron-style models; plain data parallelism needs none.
    """
    out = tag_dir / UNIVERSAL
    if out.is_dir():
        return out
    tmp = tag_dir / f"{UNIVERSAL}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    workers = str(max(1, min(8, os.cpu_count() or 1)))
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
           "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", workers,
           "--num_merge_workers", workers]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"converting {tag_dir} to a universal checkpoint failed ({proc.returncode}): "
                           f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    os.replace(tmp, out)
    return out


def _universal_dir(ckpt_dir: Path, tag: str, dist_info: DistInfo) -> Path:
    """Rank 0 converts while the others wait; a failure is raised on every rank (no rank left in a barrier)."""
    error = None
    if dist_info.is_main:
        try:
            print(f"[checkpoint] {ckpt_dir / tag} holds {saved_partitions(ckpt_dir / tag)} ZeRO partitions, this "
                  f"job has {dist_info.world_size} ranks: loading it as a DeepSpeed universal checkpoint", flush=True)
            convert_to_universal(ckpt_dir / tag)
        except (OSError, RuntimeError) as e:
            error = e
    if any_rank(error is not None, dist_info.device):
        raise error if error is not None else RuntimeError(
            f"rank 0 could not convert {ckpt_dir / tag} to a universal checkpoint (see its log)")
    return ckpt_dir / tag / UNIVERSAL


def load(engine, ckpt_dir: Path, dist_info: DistInfo) -> dict[str, Any] | None:
    """Restore the newest complete checkpoint into ``engine`` and this rank's RNGs; None when there is none.

    Returns the trainer state. An engine built with :func:`with_resume_config`'s ``load_universal`` reads
    the universal copy (made here when missing). With a different world size than at save time, ranks
    without a saved RNG state keep their seeded RNGs (the data order does not depend on them).
    """
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    load_dir, load_tag = ckpt_dir, tag
    if engine.load_universal_checkpoint():
        load_dir, load_tag = _universal_dir(ckpt_dir, tag, dist_info).parent, UNIVERSAL
    path, _ = engine.load_checkpoint(str(load_dir), tag=load_tag, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {load_dir / load_tag}")
    rng_file = ckpt_dir / tag / f"rng_rank{dist_info.rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return torch.load(ckpt_dir / tag / "trainer_state.pt", weights_only=False)
