"""Learning-rate schedules as multipliers of the peak LR (used through ``torch.optim.lr_scheduler.LambdaLR``)."""
from __future__ import annotations

import math
from functools import partial

import torch

from train.config import ScheduleConfig

SCHEDULES = ("cosine", "linear", "wsd")


def warmup_steps(cfg: ScheduleConfig, total_steps: int) -> int:
    """Warmup length in steps: ``warmup_steps`` if set, else ``warmup_fraction * total_steps``."""
    if cfg.warmup_steps > 0:
        return cfg.warmup_steps
    return int(round(cfg.warmup_fraction * total_steps))


def lr_multiplier(step: int, *, name: str, total_steps: int, warmup: int, min_ratio: float,
                  decay_fraction: float) -> float:
    """LR multiplier for optimizer step ``step`` (0-based: the multiplier used by the step-th update).

    Warmup is linear from ``1/warmup`` (step 0 must not be a no-op) to 1. After the last step the multiplier
    stays at ``min_ratio``.
    """
    if step < warmup:
        return (step + 1) / warmup
    if step >= total_steps:
        return min_ratio
    if name == "wsd":
        decay_steps = max(1, int(round(decay_fraction * (total_steps - warmup))))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = (step - decay_start + 1) / decay_steps
        return 1.0 - (1.0 - min_ratio) * progress
    progress = (step - warmup + 1) / max(1, total_steps - warmup)
    if name == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    if name == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule.name={name!r}: expected one of {SCHEDULES}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following ``cfg`` over ``total_steps`` optimizer steps (validated here, not at step time)."""
    if cfg.name not in SCHEDULES:
        raise ValueError(f"optim.schedule.name={cfg.name!r}: expected one of {SCHEDULES}")
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ValueError(f"optim.schedule.min_lr_ratio={cfg.min_lr_ratio}: must be in [0, 1]")
    if not 0.0 < cfg.decay_fraction <= 1.0:
        raise ValueError(f"optim.schedule.decay_fraction={cfg.decay_fraction}: must be in (0, 1]")
    warmup = warmup_steps(cfg, total_steps)
    if warmup > total_steps:
        raise ValueError(f"optim.schedule warmup ({warmup} steps) exceeds the {total_steps} training steps")
    fn = partial(lr_multiplier, name=cfg.name, total_steps=total_steps, warmup=warmup,
                 min_ratio=cfg.min_lr_ratio, decay_fraction=cfg.decay_fraction)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
