"""Shard sets: a directory of binary token shards with a ``manifest.json`` (see docs/design.md).

Layout: ``manifest.json``; per shard ``<split>_<NNNNN>.bin`` (raw tokens), ``<split>_<NNNNN>.idx.npy`` (int64
document start offsets within the shard) and, for ``kind: sft``, ``<split>_<NNNNN>.mask.bin`` (uint8, 1 = train
on this token). Documents never straddle shards. Shard sets are written to ``<out>.tmp-XXXX`` and renamed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.atomic import atomic_dir
from data.jsonl import DataFormatError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("pretrain", "sft")


class IncompatibleShardsError(ValueError):
    """A shard set was made with a different tokenizer than the model / run expects."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def tokenizer_info(tokenizer_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest's tokenizer block: fingerprint, vocab size, special-token ids, EOS id."""
    from data.tokenizer import fingerprint, load_tokenizer, special_token_ids

    tok = load_tokenizer(tokenizer_dir)
    return {"fingerprint": fingerprint(tokenizer_dir), "vocab_size": len(tok),
            "special_token_ids": special_token_ids(tok), "eos_token_id": int(tok.eos_token_id),
            "path": str(tokenizer_dir)}


class ShardSetWriter:
    """Append documents per split; shards roll over at ``shard_tokens``. Use as a context manager.

    The manifest is written last and the temporary directory renamed only on success.
    """

    def __init__(self, out_dir: str | os.PathLike, kind: str, tokenizer: dict[str, Any], sources: Sequence[str],
                 shard_tokens: int = 1 << 26, overwrite: bool = False):
        if kind not in KINDS:
            raise ValueError(f"shard set kind must be one of {KINDS}, got {kind!r}")
        self.out_dir, self.kind, self.tokenizer = Path(out_dir), kind, tokenizer
        self.sources, self.shard_tokens, self.overwrite = [str(s) for s in sources], int(shard_tokens), overwrite
        self.dtype = token_dtype(tokenizer["vocab_size"])
        self._splits: dict[str, list[dict[str, Any]]] = {}
        self._open: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> "ShardSetWriter":
        self._ctx = atomic_dir(self.out_dir, overwrite=self.overwrite)
        self._tmp = self._ctx.__enter__()
        return self

    def add(self, split: str, tokens: np.ndarray | Sequence[int], mask: np.ndarray | Sequence[int] | None = None) -> None:
        """Append one document (its ids, and for sft its 0/1 loss mask) to ``split``."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or len(tokens) == 0:
            raise ValueError(f"{self.out_dir}: a document must be a non-empty 1-D token array")
        if tokens.min() < 0 or tokens.max() >= self.tokenizer["vocab_size"]:
            raise ValueError(f"{self.out_dir}: token id out of range [0, {self.tokenizer['vocab_size']})")
        if (mask is None) != (self.kind != "sft"):
            raise ValueError(f"{self.out_dir}: kind {self.kind!r} {'needs' if self.kind == 'sft' else 'takes no'} loss mask")
        cur = self._open.get(split)
        if cur is None or (cur["tokens"] and cur["tokens"] + len(tokens) > self.shard_tokens):
            cur = self._roll(split)
        cur["starts"].append(cur["tokens"])
        cur["bin"].write(tokens.astype(self.dtype, copy=False).tobytes())
        if mask is not None:
            mask = np.asarray(mask, dtype=np.uint8)
            if mask.shape != tokens.shape:
                raise ValueError(f"{self.out_dir}: loss mask shape {mask.shape} != tokens shape {tokens.shape}")
            cur["mask"].write(mask.tobytes())
        cur["tokens"] += len(tokens)

    def _roll(self, split: str) -> dict[str, Any]:
        self._close(split)
        shards = self._splits.setdefault(split, [])
        name = f"{split}_{len(shards):05d}"
        cur = {"name": name, "tokens": 0, "starts": [], "bin": open(self._tmp / f"{name}.bin", "wb"),
               "mask": open(self._tmp / f"{name}.mask.bin", "wb") if self.kind == "sft" else None}
        self._open[split] = cur
        return cur

    def _close(self, split: str) -> None:
        cur = self._open.pop(split, None)
        if cur is None:
            return
        cur["bin"].close()
        if cur["mask"] is not None:
            cur["mask"].close()
        np.save(self._tmp / f"{cur['name']}.idx.npy", np.asarray(cur["starts"], dtype=np.int64))
        self._splits[split].append({"name": cur["name"], "tokens": cur["tokens"], "documents": len(cur["starts"])})

    def _release(self) -> None:
        for cur in self._open.values():
            cur["bin"].close()
            if cur["mask"] is not None:
                cur["mask"].close()
        self._open.clear()

    def _finish(self) -> None:
        for split in list(self._open):
            self._close(split)
        if not self._splits:
            raise ValueError(f"{self.out_dir}: no documents were written")
        manifest = {
            "format_version": FORMAT_VERSION, "kind": self.kind, "dtype": self.dtype.name,
            "tokenizer": self.tokenizer, "sources": self.sources,
            "splits": {s: {"tokens": sum(x["tokens"] for x in sh), "documents": sum(x["documents"] for x in sh),
                           "shards": sh} for s, sh in self._splits.items()},
        }
        (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._release()
            self._ctx.__exit__(exc_type, exc, tb)  # removes the temp dir; the body's exception propagates
            return False
        try:
            self._finish()
        except BaseException as e:
            self._release()
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        self._ctx.__exit__(None, None, None)  # renames the temp dir into place
        return False


def read_manifest(shard_dir: str | os.PathLike) -> dict[str, Any]:
    """Load and validate ``manifest.json``; errors name the file and the offending key."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; {shard_dir} is not a shard set (run `python -m data.prepare`)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: unreadable manifest ({e})") from None
    for key in ("format_version", "kind", "dtype", "tokenizer", "splits", "sources"):
        if key not in m:
            raise DataFormatError(f"{path}: manifest lacks key {key!r}")
    if m["format_version"] != FORMAT_VERSION:
        raise DataFormatError(f"{path}: format_version {m['format_version']} (this code reads {FORMAT_VERSION})")
    if m["kind"] not in KINDS:
        raise DataFormatError(f"{path}: kind {m['kind']!r} not in {KINDS}")
    return m


@dataclass(frozen=True)
class Shard:
    """One shard opened read-only: tokens (memmap), document starts, optional loss mask (memmap)."""

    name: str
    tokens: np.ndarray
    doc_starts: np.ndarray
    mask: np.ndarray | None


def open_split(shard_dir: str | os.PathLike, split: str) -> tuple[dict[str, Any], list[Shard]]:
    """Open every shard of ``split`` as memmaps after checking file sizes against the manifest."""
    shard_dir = Path(shard_dir)
    m = read_manifest(shard_dir)
    if split not in m["splits"]:
        raise KeyError(f"{shard_dir}: no split {split!r} (has {sorted(m['splits'])})")
    dtype = np.dtype(m["dtype"])
    shards = []
    for entry in m["splits"][split]["shards"]:
        name, n_tok, n_doc = entry["name"], int(entry["tokens"]), int(entry["documents"])
        bin_path = shard_dir / f"{name}.bin"
        _check_size(bin_path, n_tok * dtype.itemsize)
        tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(n_tok,))
        idx_path = shard_dir / f"{name}.idx.npy"
        try:
            starts = np.load(idx_path)
        except (OSError, ValueError) as e:
            raise DataFormatError(f"{idx_path}: unreadable document index ({e})") from None
        if starts.shape != (n_doc,) or (n_doc and (starts[0] != 0 or starts[-1] >= n_tok or np.any(np.diff(starts) <= 0))):
            raise DataFormatError(f"{idx_path}: document index does not match manifest ({n_doc} docs, {n_tok} tokens)")
        mask = None
        if m["kind"] == "sft":
            mask_path = shard_dir / f"{name}.mask.bin"
            _check_size(mask_path, n_tok)
            mask = np.memmap(mask_path, dtype=np.uint8, mode="r", shape=(n_tok,))
        shards.append(Shard(name, tokens, starts.astype(np.int64), mask))
    return m, shards


def _check_size(path: Path, expected: int) -> None:
    if not path.is_file():
        raise DataFormatError(f"{path}: shard file missing")
    size = path.stat().st_size
    if size != expected:
        raise DataFormatError(f"{path}: shard is {size} bytes but the manifest implies {expected}; the shard set is corrupt")


def check_compatible(shard_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None, vocab_size: int | None) -> dict:
    """Refuse shards made with another tokenizer, or whose ids do not fit the model's vocabulary.

    ``tokenizer_dir``: the tokenizer the run uses (fingerprints must match; None skips the check).
    ``vocab_size``: the model's embedding rows (must be >= the shards' tokenizer vocabulary; None skips).
    Returns the manifest.
    """
    from data.tokenizer import fingerprint

    m = read_manifest(shard_dir)
    tok = m["tokenizer"]
    if tokenizer_dir is not None:
        fp = fingerprint(tokenizer_dir)
        if fp != tok["fingerprint"]:
            raise IncompatibleShardsError(
                f"{shard_dir}: shards were tokenized with tokenizer {tok['fingerprint'][:12]} ({tok.get('path')}), "
                f"but the run uses {fp[:12]} ({tokenizer_dir}); re-run data.prepare with this tokenizer")
    if vocab_size is not None and tok["vocab_size"] > vocab_size:
        raise IncompatibleShardsError(
            f"{shard_dir}: shard tokenizer has {tok['vocab_size']} ids but the model's vocab_size is {vocab_size}")
    return m
