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

from tqdm import tqdm

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
            import wandb  # heavy (~1 s): only when W&B logging is on

            if self.wandb_id is None:
                self.wandb_id = uuid.uuid4().hex[:8]  # os.urandom: leaves the seeded RNGs alone
            self.wandb_run = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity, name=wandb_cfg.name or run_name,
                tags=list(wandb_cfg.tags), group=wandb_cfg.group, mode=mode, id=self.wandb_id, resume="allow",
                dir=str(run_dir), config=config,
            )
        if progress_bar:
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


def resumable_logger(rd, *, enabled: bool, wandb_cfg: WandbConfig, run_name: str, config: dict, total_steps: int,
                     start_step: int, progress_bar: bool, wandb_id: str | None = None) -> MetricsLogger:
    """The :class:`MetricsLogger` of run directory ``rd`` (a :class:`train.runtime.run_dir.RunDir`) that continues the W&B
    run of an earlier launch into it: ``wandb_id`` (e.g. from a checkpoint), else the id kept in ``rd.wandb_id``;
    the id in use is written back there (rank 0) for the next launch."""
    if enabled and wandb_id is None and rd.wandb_id.exists():
        wandb_id = rd.wandb_id.read_text().strip()
    logger = MetricsLogger(enabled=enabled, path=rd.metrics, wandb_cfg=wandb_cfg, run_name=run_name,
                           run_dir=rd.root, config=config, wandb_id=wandb_id, total_steps=total_steps,
                           start_step=start_step, progress_bar=progress_bar)
    if enabled and logger.wandb_id:
        atomic_write_text(rd.wandb_id, logger.wandb_id, overwrite=True)
    return logger
