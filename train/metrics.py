"""Rank-0 metrics: ``metrics.jsonl`` (one JSON object per logged step), W&B, and a tqdm progress bar.

Every method is a no-op on other ranks, so the loop calls them unconditionally.
"""
from __future__ import annotations

import json
import math
import netrc
import os
import uuid
from pathlib import Path
from typing import Any

from data.atomic import atomic_write_text
from train.config import WandbConfig


def has_wandb_key() -> bool:
    """An API key in WANDB_API_KEY or in ~/.netrc for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(cfg: WandbConfig) -> str:
    """WANDB_MODE wins; ``auto`` is ``online`` with an API key, else ``offline`` (never blocks on a login)."""
    mode = os.environ.get("WANDB_MODE") or cfg.mode
    if mode == "auto":
        mode = "online" if has_wandb_key() else "offline"
    if mode == "dryrun":
        mode = "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"wandb.mode={mode!r}: expected auto, online, offline or disabled")
    if mode == "online" and not has_wandb_key():
        mode = "offline"
    return mode


def truncate_after(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (a killed run logs steps its last checkpoint does not hold)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        if line.strip() and json.loads(line).get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept), overwrite=True)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf
    return v


class MetricsLogger:
    """Writes metrics on rank 0. ``wandb_id`` continues an earlier W&B run (``resume="allow"``)."""

    def __init__(self, *, enabled: bool, path: Path, wandb_cfg: WandbConfig, run_name: str, run_dir: Path,
                 config: dict, wandb_id: str | None, total_steps: int, start_step: int, progress_bar: bool):
        self.enabled = enabled
        self.path = path
        self.wandb_run = None
        self.wandb_id = wandb_id
        self.bar = None
        if not enabled:
            return
        mode = resolve_wandb_mode(wandb_cfg)
        if mode != "disabled":
            import wandb

            if self.wandb_id is None:
                self.wandb_id = uuid.uuid4().hex[:8]  # os.urandom: leaves the seeded RNGs alone
            self.wandb_run = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity, name=wandb_cfg.name or run_name,
                tags=list(wandb_cfg.tags), group=wandb_cfg.group, mode=mode, id=self.wandb_id, resume="allow",
                dir=str(run_dir), config=config,
            )
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=run_name, unit="step", dynamic_ncols=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _jsonable(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])
        if self.bar is not None:
            post = {"loss": record.get("loss"), "tok/s": record.get("tokens_per_s")}
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in post.items() if v is not None})

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
