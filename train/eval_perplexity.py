"""Validation perplexity on a shard set's held-out split, read through ``data.loader.PackedLoader``.

Perplexity = exp(total next-token loss / number of predicted tokens) over a fixed number of packed rows;
targets are the loader's labels (no prediction across documents), and ``doc_ids`` keep documents apart
inside the model exactly as in training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


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


@torch.no_grad()
def evaluate_perplexity(model, shard_dir: str, cfg: PerplexityConfig) -> dict:
    """{perplexity, val_loss, val_tokens} of ``model`` on ``cfg.split`` of the shard set ``shard_dir``."""
    from data.loader import PackedLoader

    loader = PackedLoader(sources=[(shard_dir, 1.0)], split=cfg.split, seq_len=cfg.seq_len,
                          global_batch_rows=cfg.batch_rows, rank=0, world_size=1, seed=0, split_documents=True)
    # The loader cycles; stop after one pass over the split so no token is counted twice.
    batches = max(1, min(cfg.max_batches, math.ceil(loader.tokens_per_epoch / (cfg.seq_len * cfg.batch_rows))))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    try:
        for _ in range(batches):
            batch = {k: v.to(device) for k, v in loader.next_batch().items()}
            # num_items_in_batch=1: the summed token loss, computed by the model's tiled fp32 head (no full logits).
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"], doc_ids=batch["doc_ids"],
                         num_items_in_batch=1, use_cache=False).loss
            total_loss += loss.item()
            total_tokens += int((batch["labels"][:, 1:] != -100).sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError(f"{shard_dir}: split {cfg.split!r} gave no target tokens")
    val_loss = total_loss / total_tokens
    return {"perplexity": perplexity_from_loss(val_loss), "val_loss": val_loss, "val_tokens": total_tokens}


def perplexity_from_loss(loss: float) -> float:
    """exp(loss), inf where that overflows a float (a diverged model) and nan for a nan loss, so that a
    perplexity gate fails on it instead of the evaluation crashing in ``math.exp``."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
