"""Helpers shared by the data tests (imported by name; conftest.py holds the fixtures)."""
from __future__ import annotations

import numpy as np


def fake_tokenizer_info(vocab_size: int = 1000, eos: int = 0) -> dict:
    return {"fingerprint": "f" * 64, "vocab_size": vocab_size, "special_token_ids": {"<|endoftext|>": eos},
            "eos_token_id": eos, "path": "fake"}


def write_docs(out_dir, docs, kind="pretrain", split="train", masks=None, vocab_size=1000, shard_tokens=1 << 20,
               extra_splits=None):
    """Write ``docs`` (lists of ids) as a shard set; returns its path."""
    from data.shards import ShardSetWriter

    with ShardSetWriter(out_dir, kind, fake_tokenizer_info(vocab_size), ["test"], shard_tokens=shard_tokens) as w:
        for i, d in enumerate(docs):
            w.add(split, np.asarray(d), None if masks is None else masks[i])
        for s, ds in (extra_splits or {}).items():
            for d in ds:
                w.add(s, np.asarray(d), None)
    return out_dir
