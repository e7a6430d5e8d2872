"""Text documents -> pretraining shard set, streaming: bounded memory, every core, resumable.

Documents flow in order through chunks (``CHUNK_CHARS``) tokenized in parallel (``data.tokenize_pool``,
order-preserving) and are appended, with EOS, to the ``train`` or ``val`` split. Nothing is held beyond the
chunks in flight and the open shards' document indexes, so memory does not depend on the corpus size, and the
shards are byte-identical for any number of workers. With an ``input_id`` the run is resumable: after every
completed shard the writer checkpoints, and a rerun with the same inputs and settings continues there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from data.shards import FORMAT_VERSION, ShardSetWriter, tokenizer_info
from data.tokenize_pool import tokenize_chunks
from data.tokenizer import backend_json, load_tokenizer

log = logging.getLogger(__name__)

CHUNK_CHARS = 1 << 20  # characters per tokenization task: big enough to amortise IPC, small enough to bound memory
SPLIT_BLOCK = 4096  # documents per seeded draw block of the train/val split


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def document_split(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean array, True = validation document. Seeded, so the split is reproducible; each side gets >= 1 doc
    when there are at least two documents and ``0 < val_fraction < 1``. (In-memory form, used for SFT.)"""
    check_val_fraction(val_fraction)
    is_val = np.random.default_rng(seed).random(n_docs) < val_fraction
    if val_fraction > 0 and n_docs >= 2:
        if not is_val.any():
            is_val[np.random.default_rng(seed).integers(n_docs)] = True
        if is_val.all():
            is_val[0] = False
    return is_val


def streaming_split(start: int, n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Whether documents ``start .. start+n-1`` go to ``val``: a seeded draw per block of ``SPLIT_BLOCK``
    documents, so a document's split depends only on its index (not on chunking, workers or resuming)."""
    out = np.empty(n, dtype=bool)
    pos = start
    while pos < start + n:
        block, off = divmod(pos, SPLIT_BLOCK)
        take = min(SPLIT_BLOCK - off, start + n - pos)
        draws = np.random.default_rng([seed, block]).random(SPLIT_BLOCK)
        out[pos - start:pos - start + take] = draws[off:off + take] < val_fraction
        pos += take
    return out


def chunk_texts(texts: Iterable[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[list[str]]:
    """Consecutive lists of texts of about ``chunk_chars`` characters (a longer text is a chunk of its own)."""
    chunk, size = [], 0
    for t in texts:
        chunk.append(t)
        size += len(t)
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def resume_key(info: dict, input_id: str, val_fraction: float, seed: int, shard_tokens: int) -> str:
    """Digest of everything the shards depend on (not the worker count, which does not change them)."""
    blob = json.dumps({"format": FORMAT_VERSION, "tokenizer": info["fingerprint"], "input": input_id,
                       "val_fraction": val_fraction, "seed": seed, "shard_tokens": shard_tokens,
                       "split_block": SPLIT_BLOCK}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _as_factory(documents) -> Callable[[int], Iterable[str]]:
    if callable(documents):
        return documents
    if isinstance(documents, Sequence):
        return lambda skip: documents[skip:]
    raise TypeError("documents must be a sequence of texts or a function skip -> iterable of texts")


def write_pretrain_shards(documents: Sequence[str] | Callable[[int], Iterable[str]], tokenizer_dir: str | os.PathLike,
                          out_dir: str | os.PathLike, sources: Sequence[str], val_fraction: float = 0.01,
                          seed: int = 0, num_proc: int = 1, shard_tokens: int = 1 << 26, overwrite: bool = False,
                          input_id: str | None = None, chunk_chars: int = CHUNK_CHARS) -> Path:
    """Tokenize ``documents`` (texts, or ``skip -> iterator of texts`` for streaming) into a ``kind: pretrain``
    shard set with splits train / val.

    ``num_proc`` > 1 tokenizes in that many worker processes (same bytes as 1); 0 = one per available core.
    ``input_id`` (e.g. :func:`data.documents.input_fingerprint`) makes the run resumable; None redoes an
    interrupted run from zero.
    ``chunk_chars``: characters per tokenization task (changes speed and memory, never the output).
    The last document goes to the split that would otherwise be empty (when ``0 < val_fraction`` and there are
    at least two documents), which is why one document is held back until the next arrives.
    """
    check_val_fraction(val_fraction)
    factory = _as_factory(documents)
    tok = load_tokenizer(tokenizer_dir)
    info = tokenizer_info(tokenizer_dir, tok)
    key = None if input_id is None else resume_key(info, input_id, val_fraction, seed, shard_tokens)
    with ShardSetWriter(out_dir, "pretrain", info, sources, shard_tokens=shard_tokens, overwrite=overwrite,
                        resume_key=key) as w:
        done = int(w.position["documents"]) if w.position else 0
        if done:
            log.info("%s: resuming after %d documents (the last complete shard)", out_dir, done)
        chunks = chunk_texts(factory(done), chunk_chars)
        pending = None  # (tokens, is_val) of the held-back document
        workers = num_proc or len(os.sched_getaffinity(0))
        for ids, lengths in tokenize_chunks(chunks, backend_json(tok), info["eos_token_id"], workers):
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            flags = streaming_split(done + (pending is not None), len(lengths), val_fraction, seed)
            for k in range(len(lengths)):
                if pending is not None:
                    if w.add("val" if pending[1] else "train", pending[0]):
                        w.checkpoint({"documents": done + 1})
                    done += 1
                pending = (ids[bounds[k]:bounds[k + 1]], bool(flags[k]))
        if pending is None:
            raise ValueError(f"{out_dir}: no documents to write")
        split = "val" if pending[1] else "train"
        if val_fraction > 0 and done >= 1 and w.splits_written == {split}:
            split = "train" if split == "val" else "val"  # the last document fills the empty side
        w.add(split, pending[0])
    return Path(out_dir)
