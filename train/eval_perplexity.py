"""Validation perplexity on a shard set's held-out split, read through ``data.loader.PackedLoader``.

Perplexity = exp(total next-token loss / number of predicted tokens) over a fixed number of packed rows;
targets are the loader's labels (no prediction across documents), and ``doc_ids`` keep documents apart
inside the model exactly as in training. :func:`summed_loss` is also the trainer's validation loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from data.loader import PackedLoader
from sambay_model.lm_head_loss import IGNORE_INDEX
from train.model_mode import eval_mode


@dataclass
class PerplexityConfig:
    """Validation perplexity.

    enabled: run it (default True).
    shard_dir: pretraining shard set (default ``None`` = ``<data_dir>/pretrain``).
    split: split to read (default ``val``).
    seq_len: tokens per packed row (default 256).
    batch_rows: rows per forward pass (default 8).
    max_batches: forward passes at most; fewer when the split is smaller (default 8).
    """

    enabled: bool = True
    shard_dir: Optional[str] = None
    split: str = "val"
    seq_len: int = 256
    batch_rows: int = 8
    max_batches: int = 8


def target_count(labels: torch.Tensor) -> torch.Tensor:
    """Positions that are predicted: labels are shifted inside the model, so column 0 is never a target."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


@torch.no_grad()
def summed_loss(model, batch: dict[str, torch.Tensor], rows: int, device: torch.device) -> torch.Tensor:
    """``[sum of token losses, number of targets]`` (float64) of ``batch``, forwarded ``rows`` rows at a time.

    ``model`` is a model or a DeepSpeed engine. The model's loss is the mean over a micro-batch's targets, so
    mean x count is that micro-batch's sum; summing sums keeps every token's weight equal across micro-batches.
    """
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, batch["input_ids"].shape[0], rows):
        micro = {k: v[i:i + rows].to(device) for k, v in batch.items()}
        mean = model(input_ids=micro["input_ids"], labels=micro["labels"], doc_ids=micro["doc_ids"],
                     use_cache=False).loss
        n = target_count(micro["labels"])
        total += torch.stack([mean.double() * n, n.double()])
    return total


def mean_loss(total: torch.Tensor, where: str) -> float:
    """Loss per target token from :func:`summed_loss` totals; ``where`` names the data in the error."""
    if total[1].item() == 0:
        raise ValueError(f"{where} gave no target tokens")
    return (total[0] / total[1]).item()


def evaluate_perplexity(model, shard_dir: str, cfg: PerplexityConfig) -> dict:
    """{perplexity, val_loss, val_tokens} of ``model`` on ``cfg.split`` of the shard set ``shard_dir``."""
    loader = PackedLoader(sources=[(shard_dir, 1.0)], split=cfg.split, seq_len=cfg.seq_len,
                          global_batch_rows=cfg.batch_rows, rank=0, world_size=1, seed=0, split_documents=True)
    # The loader cycles; stop after one pass over the split so no token is counted twice.
    batches = max(1, min(cfg.max_batches, math.ceil(loader.tokens_per_epoch / (cfg.seq_len * cfg.batch_rows))))
    device = next(model.parameters()).device
    with eval_mode(model):
        total = sum(summed_loss(model, loader.next_batch(), cfg.batch_rows, device) for _ in range(batches))
    val_loss = mean_loss(total, f"{shard_dir}: split {cfg.split!r}")
    return {"perplexity": perplexity_from_loss(val_loss), "val_loss": val_loss, "val_tokens": int(total[1].item())}


def perplexity_from_loss(loss: float) -> float:
    """exp(loss), inf where that overflows a float (a diverged model) and nan for a nan loss, so that a
    perplexity gate fails on it instead of the evaluation crashing in ``math.exp``."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
