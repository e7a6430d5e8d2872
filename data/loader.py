"""PackedLoader: deterministic, resumable, rank-sharded packing of shard sets into fixed-length rows.

How a global batch is made (independent of world_size, so a run may resume on a different number of ranks):
- Row ``j`` of global batch ``b`` comes from one source, drawn with the source weights from a generator seeded
  by ``(seed, b)``; each source then yields its next row from its own cursor.
- ``split_documents=True`` (pretraining): a source's token stream is cut into ``seq_len`` windows (an
  epoch-seeded offset in ``[0, tokens % seq_len]`` so the tail is not always dropped), visited in an
  epoch-seeded random order.
- ``split_documents=False`` (SFT): documents, in an epoch-seeded random order, are packed whole and greedily
  (one longer than ``seq_len`` is truncated); the rest of the row is padding. A row never spans epochs.
Every rank plans all rows of a global batch (cheap: counters and document lengths) and reads tokens only for
its own share via memmaps, so no rank ever holds the dataset in memory.
"""
from __future__ import annotations

import bisect
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from data.shards import open_split
from sambay_model.lm_head_loss import IGNORE_INDEX

STATE_VERSION = 1


class _Source:
    """One split of one shard set, seen as a single token stream (shards concatenated).

    Document starts stay in the shards' memory-mapped indexes; only per-shard offsets (a few numbers per
    shard) are held, so memory does not grow with the number of documents.
    """

    def __init__(self, shard_dir: str, split: str):
        self.path = str(shard_dir)
        manifest, self.shards = open_split(shard_dir, split)
        self.kind = manifest["kind"]
        self.pad_id = int(manifest["tokenizer"]["eos_token_id"])
        self.tokenizer_fingerprint = manifest["tokenizer"]["fingerprint"]
        sizes = np.array([len(s.tokens) for s in self.shards], dtype=np.int64)
        self.shard_offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.doc_offsets = np.concatenate([[0], np.cumsum([len(s.doc_starts) for s in self.shards])]).astype(np.int64)
        self.n_tokens = int(self.shard_offsets[-1])
        self.n_docs = int(self.doc_offsets[-1])
        # Plain-ndarray views of the memmaps (still file-backed, no copy): indexing skips np.memmap's per-access
        # subclass overhead; Python lists make the per-document shard lookup a bisect.
        self._starts = [s.doc_starts.view(np.ndarray) for s in self.shards]
        self._tokens = [s.tokens.view(np.ndarray) for s in self.shards]
        self._masks = [None if s.mask is None else s.mask.view(np.ndarray) for s in self.shards]
        self._doc_off, self._tok_off = self.doc_offsets.tolist(), self.shard_offsets.tolist()
        if self.n_tokens == 0:
            raise ValueError(f"{shard_dir}: split {split!r} has no tokens")

    def document(self, d: int) -> tuple[int, int]:
        """Global start and length of document ``d``."""
        i = bisect.bisect_right(self._doc_off, d) - 1
        starts, local = self._starts[i], d - self._doc_off[i]
        first = int(starts[local])
        end = int(starts[local + 1]) if local + 1 < len(starts) else self._tok_off[i + 1] - self._tok_off[i]
        return self._tok_off[i] + first, end - first

    def clipped_tokens(self, seq_len: int) -> int:
        """Sum over documents of min(length, seq_len), one shard's index at a time."""
        total = 0
        for s in self.shards:
            total += int(np.minimum(s.doc_lengths(), seq_len).sum())
        return total

    def _pieces(self, start: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """(shard, offset in shard, count, offset in the range) covering the global range [start, start+length)."""
        i = bisect.bisect_right(self._tok_off, start) - 1
        done = 0
        while done < length:
            off = start + done - self._tok_off[i]
            n = min(length - done, self._tok_off[i + 1] - self._tok_off[i] - off)
            yield i, off, n, done
            done += n
            i += 1

    def document_ids(self, start: int, length: int) -> np.ndarray:
        """Global document index of every token in [start, start+length), via the memory-mapped indexes."""
        out = np.empty(length, dtype=np.int64)
        for i, off, n, pos in self._pieces(start, length):
            out[pos:pos + n] = np.searchsorted(self._starts[i], np.arange(off, off + n), side="right") + (self._doc_off[i] - 1)
        return out

    def read(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Tokens (int64) and loss mask (uint8, or None for pretrain shards) of the global range [start, start+length)."""
        toks = np.empty(length, dtype=np.int64)
        mask = np.empty(length, dtype=np.uint8) if self.kind == "sft" else None
        for i, off, n, pos in self._pieces(start, length):
            toks[pos:pos + n] = self._tokens[i][off:off + n]
            if mask is not None:
                mask[pos:pos + n] = self._masks[i][off:off + n]
        return toks, mask


def _greedy_rows(lengths: list[int], seq_len: int) -> int:
    """Rows the loader's greedy packing makes from documents of ``lengths`` (each <= seq_len), in this order."""
    rows, used = 0, 0
    for n in lengths:
        if used + n > seq_len:
            rows, used = rows + 1, 0
        used += n
    return rows + (1 if used else 0)


@dataclass
class _Cursor:
    epoch: int = 0
    position: int = 0


class PackedLoader:
    """Yields this rank's share of each global batch: ``{"input_ids", "labels", "doc_ids"}``, LongTensors
    ``[global_batch_rows // world_size, seq_len]``.

    Args:
        sources: ``[(shard_dir, weight), ...]``; weights need not sum to 1.
        split: which split of every shard set to read.
        seq_len: tokens per row.
        global_batch_rows: rows per global batch (all ranks together); divisible by ``world_size``.
        rank, world_size: this process's place in data parallelism.
        seed: decides source draws, window/document order and offsets.
        split_documents: True packs a continuous stream (pretraining); False packs whole documents (SFT).
    """

    def __init__(self, sources: Sequence[tuple[str | os.PathLike, float]], split: str = "train", seq_len: int = 2048,
                 global_batch_rows: int = 8, rank: int = 0, world_size: int = 1, seed: int = 0,
                 split_documents: bool = True):
        if not sources:
            raise ValueError("PackedLoader needs at least one source")
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank/world_size: {rank}/{world_size}")
        if global_batch_rows % world_size:
            raise ValueError(f"global_batch_rows={global_batch_rows} is not divisible by world_size={world_size}")
        weights = np.array([float(w) for _, w in sources], dtype=np.float64)
        if np.any(weights < 0) or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(f"source weights must be finite, >= 0 and not all 0: {weights.tolist()}")
        self.split, self.seq_len, self.global_batch_rows = split, int(seq_len), int(global_batch_rows)
        self.rank, self.world_size, self.seed, self.split_documents = rank, world_size, int(seed), split_documents
        self.weights = weights / weights.sum()
        self._sources = [_Source(str(p), split) for p, _ in sources]
        fps = {s.tokenizer_fingerprint for s in self._sources}
        if len(fps) != 1:
            raise ValueError("sources were tokenized with different tokenizers: "
                             + ", ".join(f"{s.path} ({s.tokenizer_fingerprint[:12]})" for s in self._sources))
        self.pad_id = self._sources[0].pad_id
        for s in self._sources:
            if split_documents and s.n_tokens < self.seq_len:
                raise ValueError(f"{s.path}: split {split!r} has {s.n_tokens} tokens, fewer than seq_len={seq_len}")
        self._cursors = [_Cursor() for _ in self._sources]
        self._batch_index = 0
        self._tokens_seen = 0
        self._epoch_cache: dict[tuple[str, int, int], Any] = {}  # see _per_epoch

    # ---- epoch bookkeeping -------------------------------------------------------------------------------------
    def _n_units(self, s: int) -> int:
        src = self._sources[s]
        return src.n_tokens // self.seq_len if self.split_documents else src.n_docs

    def _per_epoch(self, what: str, s: int, epoch: int, make: Callable[[], Any]) -> Any:
        """``make()`` for source ``s`` and ``epoch``, cached; only recent epochs are kept (all recomputable from
        the seed)."""
        key = (what, s, epoch)
        if key not in self._epoch_cache:
            if len(self._epoch_cache) > 4 * len(self._sources):
                self._epoch_cache.clear()
            self._epoch_cache[key] = make()
        return self._epoch_cache[key]

    def _order(self, s: int, epoch: int) -> np.ndarray:
        return self._per_epoch("order", s, epoch,
                               lambda: np.random.default_rng([self.seed, s, epoch]).permutation(self._n_units(s)))

    def _window_offset(self, s: int, epoch: int) -> int:
        slack = self._sources[s].n_tokens - self._n_units(s) * self.seq_len
        return self._per_epoch("offset", s, epoch,
                               lambda: int(np.random.default_rng([self.seed, s, epoch, 1]).integers(slack + 1)))

    @functools.cached_property
    def tokens_per_epoch(self) -> int:
        """Tokens (excluding padding) in one pass over every source (computed once: SFT reads every index)."""
        if self.split_documents:
            return sum(self._n_units(s) * self.seq_len for s in range(len(self._sources)))
        return sum(src.clipped_tokens(self.seq_len) for src in self._sources)

    @functools.cached_property
    def padded_tokens_per_epoch(self) -> int:
        """Row tokens, padding included, of one pass over every source: what one epoch costs in batch tokens.

        Equals ``tokens_per_epoch`` when documents are split into windows. With whole-document packing (SFT)
        every row carries padding, so ``epochs`` must be converted to steps with this number (dividing
        ``tokens_per_epoch`` by the batch tokens would cover only the non-padding fraction of a pass). It
        replays the greedy packing of epoch 0's document order on lengths only (later epochs' orders pack
        to within a few rows of it).
        """
        if self.split_documents:
            return self.tokens_per_epoch
        rows = 0
        for s, src in enumerate(self._sources):
            lens = np.concatenate([sh.doc_lengths() for sh in src.shards])
            rows += _greedy_rows(np.minimum(lens, self.seq_len)[self._order(s, 0)].tolist(), self.seq_len)
        return rows * self.seq_len

    @property
    def epoch(self) -> float:
        """Tokens yielded so far (all ranks, no padding) divided by ``tokens_per_epoch``."""
        return self._tokens_seen / self.tokens_per_epoch

    @property
    def source_epochs(self) -> list[int]:
        """Completed passes over each source."""
        return [c.epoch for c in self._cursors]

    # ---- planning: advance cursors, return (source, [(start, length), ...]) per row ----------------------------
    def _plan_row(self, s: int) -> list[tuple[int, int]]:
        cur, n_units = self._cursors[s], self._n_units(s)
        if self.split_documents:
            w = int(self._order(s, cur.epoch)[cur.position])
            segs = [(self._window_offset(s, cur.epoch) + w * self.seq_len, self.seq_len)]
            cur.position += 1
        else:
            src, order, used, segs = self._sources[s], self._order(s, cur.epoch), 0, []
            while cur.position < n_units:
                d_start, d_len = src.document(int(order[cur.position]))
                n = min(d_len, self.seq_len)
                if used + n > self.seq_len:
                    break
                segs.append((d_start, n))
                used += n
                cur.position += 1
        if cur.position >= n_units:
            cur.epoch, cur.position = cur.epoch + 1, 0
        return segs

    def _row_sources(self, batch_index: int) -> np.ndarray:
        if len(self._sources) == 1:
            return np.zeros(self.global_batch_rows, dtype=np.int64)
        rng = np.random.default_rng([self.seed, 7919, batch_index])
        return rng.choice(len(self._sources), size=self.global_batch_rows, p=self.weights)

    # ---- materialisation --------------------------------------------------------------------------------------
    def _build_row(self, s: int, segs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src, T = self._sources[s], self.seq_len
        ids = np.full(T, self.pad_id, dtype=np.int64)
        labels = np.full(T, IGNORE_INDEX, dtype=np.int64)
        doc = np.empty(T, dtype=np.int64)
        pos, next_doc = 0, 0
        for start, length in segs:
            toks, mask = src.read(start, length)
            ids[pos:pos + length] = toks
            lab = toks.copy()
            if mask is not None:
                lab[mask == 0] = IGNORE_INDEX
            # Document id per token: starts inside the segment open a new document.
            k = src.document_ids(start, length)
            local = k - k[0] + next_doc
            doc[pos:pos + length] = local
            is_start = np.concatenate([[True], local[1:] != local[:-1]])
            lab[is_start] = IGNORE_INDEX  # never predict a document's first token from the previous document
            labels[pos:pos + length] = lab
            next_doc = int(local[-1]) + 1
            pos += length
        doc[pos:] = next_doc  # padding is its own document
        return ids, labels, doc

    def next_batch(self) -> dict[str, torch.Tensor]:
        """This rank's rows of the next global batch."""
        per = self.global_batch_rows // self.world_size
        lo, hi = self.rank * per, (self.rank + 1) * per
        choice = self._row_sources(self._batch_index)
        rows = []
        for j, s in enumerate(choice):
            segs = self._plan_row(int(s))
            self._tokens_seen += sum(n for _, n in segs)
            if lo <= j < hi:
                rows.append(self._build_row(int(s), segs))
        self._batch_index += 1
        ids, labels, doc = (torch.from_numpy(np.stack(x)) for x in zip(*rows))
        return {"input_ids": ids, "labels": labels, "doc_ids": doc}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    # ---- checkpointing ----------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"sources": [s.path for s in self._sources], "weights": self.weights.tolist(), "split": self.split,
                "seq_len": self.seq_len, "global_batch_rows": self.global_batch_rows, "seed": self.seed,
                "split_documents": self.split_documents}

    def state_dict(self) -> dict[str, Any]:
        """Exact position (global, rank-independent) plus the settings it is only valid for."""
        return {"version": STATE_VERSION, "batch_index": self._batch_index, "tokens_seen": self._tokens_seen,
                "cursors": [[c.epoch, c.position] for c in self._cursors], "identity": self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; any world_size / rank may load any state of the same data and settings."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} != {STATE_VERSION}")
        mine = self._identity()
        for key, value in state["identity"].items():
            if key != "sources" and mine.get(key) != value:
                raise ValueError(f"loader state was saved with {key}={value!r}, this loader has {key}={mine.get(key)!r}")
        if len(state["identity"]["sources"]) != len(self._sources):
            raise ValueError(f"loader state has {len(state['identity']['sources'])} sources, this loader {len(self._sources)}")
        self._batch_index, self._tokens_seen = int(state["batch_index"]), int(state["tokens_seen"])
        self._cursors = [_Cursor(int(e), int(p)) for e, p in state["cursors"]]
