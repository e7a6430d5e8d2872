"""Validation perplexity on a shard set's held-out split, read through ``data.loader.PackedLoader``.

Perplexity = exp(total next-token loss / number of predicted tokens) over a fixed number of packed rows;
targets are the loader's labels (no prediction across documents), and ``doc_ids`` keep documents apart
inside the model exactly as in training; the token sums are :mod:`train.runtime.token_loss`'s, as in
the trainer's validation loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from data.loader import PackedLoader
from train.runtime.model_mode import eval_mode
from train.runtime.token_loss import mean_loss, perplexity_from_loss, summed_loss


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

