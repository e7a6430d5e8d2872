"""Validation perplexity on a shard set's held-out split, read through ``data.loader.PackedLoader``.

Perplexity = exp(total next-token loss / number of predicted tokens) over a fixed number of packed rows;
targets are the loader's labels (no prediction across documents), and ``doc_ids`` keep documents apart
inside the model exactly as in training; the token sums are :mod:`train.runtime.token_loss`'s, as in
the trainer's validation loss.

``unigram_perplexity`` is what the model is compared with: the perplexity, on exactly the same target tokens, of
a model that ignores context and predicts each token by its frequency in the shard set's ``unigram_split``
(add-one smoothed over the model's vocabulary). A pretrained model must be well below it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from data.loader import PackedLoader
from data.shards import open_split
from sambay_model.lm_head_loss import IGNORE_INDEX
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
    unigram_split: split whose token frequencies give ``unigram_perplexity`` (default ``train``); ``None`` skips it.
    """

    enabled: bool = True
    shard_dir: Optional[str] = None
    split: str = "val"
    seq_len: int = 256
    batch_rows: int = 8
    max_batches: int = 8
    unigram_split: Optional[str] = "train"


def evaluate_perplexity(model, shard_dir: str, cfg: PerplexityConfig) -> dict:
    """{perplexity, val_loss, val_tokens[, unigram_perplexity]} of ``model`` on ``cfg.split`` of ``shard_dir``."""
    loader = PackedLoader(sources=[(shard_dir, 1.0)], split=cfg.split, seq_len=cfg.seq_len,
                          global_batch_rows=cfg.batch_rows, rank=0, world_size=1, seed=0, split_documents=True)
    # The loader cycles; stop after one pass over the split so no token is counted twice.
    batches = max(1, min(cfg.max_batches, math.ceil(loader.tokens_per_epoch / (cfg.seq_len * cfg.batch_rows))))
    device = next(model.parameters()).device
    vocab_size = model.config.vocab_size
    total = torch.zeros(2, dtype=torch.float64, device=device)
    scored = torch.zeros(vocab_size, dtype=torch.float64)  # how often each token id is a scored target
    with eval_mode(model):
        for _ in range(batches):
            batch = loader.next_batch()
            total += summed_loss(model, batch, cfg.batch_rows, device)
            scored += target_histogram(batch["labels"], vocab_size)
    where = f"{shard_dir}: split {cfg.split!r}"
    val_loss = mean_loss(total, where)
    out = {"perplexity": perplexity_from_loss(val_loss), "val_loss": val_loss, "val_tokens": int(total[1].item())}
    if cfg.unigram_split is not None:
        log_probs = unigram_log_probs(shard_dir, cfg.unigram_split, vocab_size)
        out["unigram_perplexity"] = perplexity_from_loss(-(scored * log_probs).sum().item() / scored.sum().item())
    return out


def target_histogram(labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Counts (float64, ``vocab_size``) of the target ids of ``labels``: the positions
    :func:`train.runtime.token_loss.summed_loss` scores (labels shift inside the model, so column 0 is none)."""
    targets = labels[:, 1:]
    return torch.bincount(targets[targets != IGNORE_INDEX].flatten().cpu(), minlength=vocab_size).double()


def unigram_log_probs(shard_dir: str, split: str, vocab_size: int, block: int = 1 << 24) -> torch.Tensor:
    """log p(token) (float64, ``vocab_size``) from the token counts of ``split`` of ``shard_dir``, add-one smoothed
    so a token never seen there still has a finite loss; read ``block`` tokens at a time (bounded memory)."""
    try:
        _, shards = open_split(shard_dir, split)
    except KeyError as err:
        raise ValueError(f"perplexity.unigram_split: {err.args[0]}") from None
    counts = np.zeros(vocab_size, dtype=np.int64)
    for shard in shards:
        for i in range(0, len(shard.tokens), block):
            counts += np.bincount(np.asarray(shard.tokens[i:i + block], dtype=np.int64), minlength=vocab_size)
    smoothed = torch.from_numpy(counts).double() + 1.0
    return (smoothed / smoothed.sum()).log()
