"""The process around the trainer: a dry run, or the process group plus :class:`train.engine.trainer.Trainer` for each
spec, mapped to the entry points' exit codes. Used by ``train.pretrain`` (one spec) and ``train.sft`` (one spec
per stage, built as the previous stage finishes).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Iterable

import torch.distributed as dist

from data.dir_lock import RunDirLockedError
from train.config import DeepSpeedConfig
from train.runtime.distributed import init_distributed
from train.engine.trainer import NonFiniteLossError, StopReason, TrainSpec, dry_run_summary, train


def run_specs(specs: Iterable[TrainSpec], deepspeed_cfg: DeepSpeedConfig, dry_run: bool) -> int:
    """Dry-run every spec, or train them in order on every rank; returns the process exit code.

    ``specs`` is consumed lazily, so SFT can build stage k+1 (which reads stage k's export) after stage k.
    """
    if dry_run:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        for spec in specs:
            print(json.dumps({"dry_run": dry_run_summary(spec, world)}), flush=True)
        return 0
    dist_info = init_distributed(deepspeed_cfg)
    try:
        for spec in specs:
            if train(spec, dist_info) is StopReason.preempted:
                break
        return 0
    except (NonFiniteLossError, RunDirLockedError) as e:
        print(f"[train] rank {dist_info.rank}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
