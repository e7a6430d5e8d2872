"""Run one or more TrainSpecs from an entry point: a dry run, or the process group plus the training loop.

Shared by ``train.pretrain`` (one spec) and ``train.sft`` (one spec per stage, built lazily).
"""
from __future__ import annotations

import json
import sys


def run_specs(cfg, make_specs) -> int:
    """Shared by pretraining and SFT: dry run, or init the process group and train each spec in order.

    ``make_specs(dry_run)`` returns a TrainSpec or a list of them (built lazily, so SFT can build stage k+1
    after stage k exported).
    """
    import os

    import torch.distributed as dist

    from train.distributed import init_distributed
    from train.run_lock import RunDirLockedError
    from train.trainer import NonFiniteLossError, StopReason, dry_run_summary, train

    if cfg.trainer.dry_run:
        specs = make_specs(True)
        specs = specs if isinstance(specs, list) else [specs]
        world = int(os.environ.get("WORLD_SIZE", "1"))
        for spec in specs:
            spec = spec() if callable(spec) else spec
            print(json.dumps({"dry_run": dry_run_summary(spec, world)}), flush=True)
        return 0
    dist_info = init_distributed(cfg.deepspeed)
    try:
        specs = make_specs(False)
        for spec in specs if isinstance(specs, list) else [specs]:
            spec = spec() if callable(spec) else spec
            if train(spec, dist_info) is StopReason.preempted:
                break
        return 0
    except NonFiniteLossError as e:
        print(f"[train] rank {dist_info.rank}: {e}", file=sys.stderr, flush=True)
        return NonFiniteLossError.exit_code
    except RunDirLockedError as e:
        print(f"[train] rank {dist_info.rank}: {e}", file=sys.stderr, flush=True)
        return RunDirLockedError.exit_code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
