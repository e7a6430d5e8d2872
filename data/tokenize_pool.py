"""Ordered parallel tokenization: chunks of texts in, one flat id array per chunk out, in input order.

Worker processes (``spawn``: no inherited threads or locks) each run the tokenizer single-threaded on whole
chunks and return numpy arrays, so every core tokenizes and converts ids while the parent only reads input
and writes shards. At most ``2 * workers`` chunks are in flight, which bounds memory whatever the corpus size.
Results are collected in submission order, so the output does not depend on the number of workers.
Why not ``Pool.imap``: its feeder thread drains the input iterator as fast as it can (unbounded memory).
Why not the tokenizers library's own threads: ids must still be copied out of every ``Encoding`` in the
parent under the GIL; ``bench/bench_prepare.py`` measures both.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
from typing import Iterable, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer

# Nothing of ``transformers`` (nor of ``data.tokenizer``, which imports it) is imported here: spawned workers
# import this module, and ``transformers`` would cost each of them seconds and hundreds of MB.
_worker_tokenizer = None  # set once per worker process by _init_worker; never touched in the parent


def make_tokenizer(tokenizer_json: str) -> Tokenizer:
    """The backend tokenizer of ``tokenizer_json`` (see ``data.tokenizer.backend_json``), without truncation
    or padding."""
    tk = Tokenizer.from_str(tokenizer_json)
    tk.no_truncation()
    tk.no_padding()
    return tk


def encode_chunk(tk, texts: Sequence[str], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, lengths)``: every text's ids followed by ``eos_id``, concatenated (int64); lengths include EOS."""
    encodings = tk.encode_batch_fast(list(texts), add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings))
    ids = np.empty(int(lengths.sum()), dtype=np.int64)
    pos = 0
    for e, n in zip(encodings, lengths):
        ids[pos:pos + n - 1] = e.ids
        ids[pos + n - 1] = eos_id
        pos += n
    return ids, lengths


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker; the pool is the parallelism
    _worker_tokenizer = make_tokenizer(tokenizer_json)


def _encode_in_worker(texts: Sequence[str], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    return encode_chunk(_worker_tokenizer, texts, eos_id)


def tokenize_chunks(chunks: Iterable[Sequence[str]], tokenizer_json: str, eos_id: int,
                    workers: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, lengths)`` per chunk of ``chunks``, in order; ``workers`` > 1 tokenizes in that many processes."""
    if workers <= 1:
        tk = make_tokenizer(tokenizer_json)
        for texts in chunks:
            yield encode_chunk(tk, texts, eos_id)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_json,)) as pool:
        pending: collections.deque = collections.deque()
        for texts in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (texts, eos_id)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
