"""The tokenized SFT data of a fine-tuning run, cached beside it: ``<cache root>/<key>/``, a ``kind: sft`` shard set.

The key is a digest of what the tokens depend on: the data files (resolved path, size and modification time of
every file, :func:`files_signature`), the tokenizer's fingerprint (its vocabulary and chat template), the sequence
length, the held-out fraction and seed, and :data:`CACHE_FORMAT`. Equal key: the shard set is reused; any change:
a new one is built under a new key. It holds only token ids, loss masks and the tokenizer's fingerprint, never
the checkpoint's weights. Ranks of one run build it once: each takes ``<key>.lock`` in turn and finds it there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from data.chat_data import iter_chat_examples
from data.dir_lock import RunLock
from data.records import data_paths
from data.shards import MANIFEST
from data.sft_shards import write_chat_shards
from data.tokenizer import fingerprint

log = logging.getLogger(__name__)

# Bump when the mask derivation, the split draw or the shard layout changes: every older cache is then rebuilt.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class ChatDataSpec:
    """A fine-tuning run's data settings (``sft.train_data`` and friends, named in errors by ``keys``' values).

    train: data files (or directories) to train on. held_out: data files of the ``val`` split (None: a
    ``eval_fraction`` share of ``train``, seeded by ``seed``). seq_len: the run's row length (part of the key).
    """

    train: list[str]
    held_out: Optional[list[str]]
    eval_fraction: float
    seq_len: int
    seed: int
    train_key: str = "sft.train_data"
    held_out_key: str = "sft.eval_data"


def files_signature(paths: Sequence[Path]) -> list[list]:
    """``[resolved path, size, mtime_ns]`` of every file of ``paths`` (directories walked in sorted order)."""
    out = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            st = f.stat()
            out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_key(spec: ChatDataSpec, tokenizer_fingerprint: str) -> str:
    """The cache directory name of ``spec`` tokenized by the tokenizer with ``tokenizer_fingerprint``."""
    held_out = None if spec.held_out is None else files_signature(data_paths(spec.held_out, spec.held_out_key))
    blob = {"format": CACHE_FORMAT, "tokenizer": tokenizer_fingerprint, "seq_len": spec.seq_len,
            "train": files_signature(data_paths(spec.train, spec.train_key)), "held_out": held_out,
            "eval_fraction": spec.eval_fraction if held_out is None else None, "seed": spec.seed}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]


def build_chat_cache(spec: ChatDataSpec, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Tokenize ``spec``'s data into the shard set ``out_dir`` (written atomically) and log its sizes."""
    held_out = None if spec.held_out is None else iter_chat_examples(spec.held_out, spec.held_out_key)
    sources = [f"{spec.train_key}={spec.train}"] + ([f"{spec.held_out_key}={spec.held_out}"] if held_out else [])
    counts = write_chat_shards(iter_chat_examples(spec.train, spec.train_key), held_out, tokenizer_dir, out_dir,
                               sources, spec.eval_fraction, spec.seed)
    where = spec.held_out_key if spec.held_out is not None else f"sft.eval_fraction={spec.eval_fraction} of the data"
    log.info("SFT data %s: %s; held out (%s): %d conversations", out_dir, json.dumps(asdict(counts)), where,
             counts.val)
    if not counts.val:
        log.warning("SFT data %s: no held-out conversation, so no validation; set %s or raise sft.eval_fraction",
                    out_dir, spec.held_out_key)
    return Path(out_dir)


def cache_dir(spec: ChatDataSpec, tokenizer_dir: str | os.PathLike, cache_root: str | os.PathLike) -> Path:
    """Where ``spec`` tokenized by ``tokenizer_dir`` is cached under ``cache_root`` (complete when it holds a
    manifest)."""
    return Path(cache_root) / cache_key(spec, fingerprint(tokenizer_dir))


def ensure_chat_cache(spec: ChatDataSpec, tokenizer_dir: str | os.PathLike, cache_root: str | os.PathLike) -> Path:
    """:func:`cache_dir`: reused when it is complete, else built (once, whichever process locks it first)."""
    out = cache_dir(spec, tokenizer_dir, cache_root)
    with RunLock(out.parent / f"{out.name}.lock", wait=True):
        if (out / MANIFEST).is_file():
            log.info("SFT data: reusing %s (same data files, tokenizer and seq_len)", out)
            return out
        return build_chat_cache(spec, tokenizer_dir, out)
