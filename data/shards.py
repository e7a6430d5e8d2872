"""Shard sets: a directory of binary token shards with a ``manifest.json`` (see docs/design.md).

Layout: ``manifest.json``; per shard ``<split>_<NNNNN>.bin`` (raw tokens), ``<split>_<NNNNN>.idx.npy`` (int64
document start offsets within the shard) and, for ``kind: sft``, ``<split>_<NNNNN>.mask.bin`` (uint8, 1 = train
on this token). Documents never straddle shards. Shard sets are written to ``<out>.tmp-XXXX`` and renamed.
"""
from __future__ import annotations

import array
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.atomic import atomic_dir, atomic_file, atomic_write_text, check_writable, publish_dir
from data.jsonl import DataFormatError
from data.tokenizer import check_fingerprint, fingerprint, load_tokenizer, special_token_ids

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("pretrain", "sft")


class IncompatibleShardsError(ValueError):
    """A shard set was made with a different tokenizer than the model / run expects."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def tokenizer_info(tokenizer_dir: str | os.PathLike, tok=None) -> dict[str, Any]:
    """The manifest's tokenizer block: fingerprint, vocab size, special-token ids, EOS id (``tok``: the
    tokenizer of ``tokenizer_dir`` when the caller has it loaded already)."""
    tok = tok if tok is not None else load_tokenizer(tokenizer_dir)
    return {"fingerprint": fingerprint(tokenizer_dir), "vocab_size": len(tok),
            "special_token_ids": special_token_ids(tok), "eos_token_id": int(tok.eos_token_id),
            "path": str(tokenizer_dir)}


PROGRESS = "progress.json"
PARTIAL_SUFFIX = ".partial"


class _OpenShard:
    """A shard being written: ``<name>.bin.tmp`` (+ ``.mask.bin.tmp``), renamed when the shard is complete."""

    def __init__(self, directory: Path, name: str, with_mask: bool, tokens: int = 0, starts: Sequence[int] = ()):
        self.directory, self.name, self.tokens = directory, name, tokens
        self.starts = array.array("q", starts)  # 8 bytes per document, at most shard_tokens entries
        mode = "r+b" if tokens else "wb"  # r+b: a resumed shard, already truncated to its checkpoint
        self.bin = open(self.path(".bin.tmp"), mode)
        self.mask = open(self.path(".mask.bin.tmp"), mode) if with_mask else None
        for f in self.files():
            f.seek(0, os.SEEK_END)

    def path(self, suffix: str) -> Path:
        return self.directory / f"{self.name}{suffix}"

    def files(self) -> list:
        return [f for f in (self.bin, self.mask) if f is not None]

    def close(self) -> None:
        for f in self.files():
            f.close()

    def entry(self) -> dict[str, Any]:
        return {"name": self.name, "tokens": self.tokens, "documents": len(self.starts)}


class ShardSetWriter:
    """Append documents per split; shards roll over at ``shard_tokens``. Use as a context manager.

    Each shard is written under a temporary name and renamed when complete; the manifest is written last and
    the working directory renamed to ``out_dir`` only on success. Without ``resume_key`` the working directory
    is a fresh ``<out>.tmp-XXXX``, removed on any error. With ``resume_key`` (a digest of everything the
    output depends on) it is ``<out>.partial``: :meth:`checkpoint` records a consistent state there, an
    interrupted run keeps it, and a writer with the same key continues from it (``position`` is what the
    caller passed to the last checkpoint, None when starting fresh).
    """

    def __init__(self, out_dir: str | os.PathLike, kind: str, tokenizer: dict[str, Any], sources: Sequence[str],
                 shard_tokens: int = 1 << 26, overwrite: bool = False, resume_key: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"shard set kind must be one of {KINDS}, got {kind!r}")
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.out_dir, self.kind, self.tokenizer = Path(out_dir), kind, tokenizer
        self.sources, self.shard_tokens, self.overwrite = [str(s) for s in sources], int(shard_tokens), overwrite
        self.resume_key = resume_key
        self.dtype = token_dtype(tokenizer["vocab_size"])
        self._splits: dict[str, list[dict[str, Any]]] = {}
        self._open: dict[str, _OpenShard] = {}
        self.position: dict[str, Any] | None = None

    @property
    def splits_written(self) -> set[str]:
        """Splits holding at least one document so far."""
        return set(self._splits) | set(self._open)

    def __enter__(self) -> "ShardSetWriter":
        if self.resume_key is None:
            self._ctx = atomic_dir(self.out_dir, overwrite=self.overwrite)
            self._tmp = self._ctx.__enter__()
            return self
        check_writable(self.out_dir, self.overwrite)
        self._tmp = self.out_dir.with_name(self.out_dir.name + PARTIAL_SUFFIX)
        if not self._restore():
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp.mkdir(parents=True)
            self._splits, self._open, self.position = {}, {}, None
        return self

    def add(self, split: str, tokens: np.ndarray | Sequence[int], mask: np.ndarray | Sequence[int] | None = None) -> bool:
        """Append one document (its ids, and for sft its 0/1 loss mask) to ``split``.

        Returns True when this closed a complete shard (a good moment for :meth:`checkpoint`).
        """
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or len(tokens) == 0:
            raise ValueError(f"{self.out_dir}: a document must be a non-empty 1-D token array")
        if tokens.min() < 0 or tokens.max() >= self.tokenizer["vocab_size"]:
            raise ValueError(f"{self.out_dir}: token id out of range [0, {self.tokenizer['vocab_size']})")
        if (mask is None) != (self.kind != "sft"):
            raise ValueError(f"{self.out_dir}: kind {self.kind!r} {'needs' if self.kind == 'sft' else 'takes no'} loss mask")
        if mask is not None:
            mask = np.asarray(mask, dtype=np.uint8)
            if mask.shape != tokens.shape:
                raise ValueError(f"{self.out_dir}: loss mask shape {mask.shape} != tokens shape {tokens.shape}")
        cur, rolled = self._open.get(split), False
        if cur is None or (cur.tokens and cur.tokens + len(tokens) > self.shard_tokens):
            rolled = cur is not None
            cur = self._roll(split)
        cur.starts.append(cur.tokens)
        cur.bin.write(tokens.astype(self.dtype, copy=False).tobytes())
        if mask is not None:
            cur.mask.write(mask.tobytes())
        cur.tokens += len(tokens)
        return rolled

    def _roll(self, split: str) -> _OpenShard:
        self._close(split)
        name = f"{split}_{len(self._splits.setdefault(split, [])):05d}"
        cur = self._open[split] = _OpenShard(self._tmp, name, self.kind == "sft")
        return cur

    def _close(self, split: str) -> None:
        cur = self._open.pop(split, None)
        if cur is None:
            return
        cur.close()
        _save_npy(cur.path(".idx.npy"), np.frombuffer(cur.starts, dtype=np.int64))
        os.replace(cur.path(".bin.tmp"), cur.path(".bin"))
        if cur.mask is not None:
            os.replace(cur.path(".mask.bin.tmp"), cur.path(".mask.bin"))
        self._splits[split].append(cur.entry())

    # ---- resuming ---------------------------------------------------------------------------------------------
    def checkpoint(self, position: dict[str, Any]) -> None:
        """Record that everything added so far is durable and corresponds to the caller's ``position``."""
        if self.resume_key is None:
            return
        open_entries = {}
        for split, cur in self._open.items():
            for f in cur.files():
                f.flush()
            _save_npy(cur.path(".idx.partial.npy"), np.frombuffer(cur.starts, dtype=np.int64))
            open_entries[split] = cur.entry()
        state = {"key": self.resume_key, "position": position, "splits": self._splits, "open": open_entries}
        atomic_write_text(self._tmp / PROGRESS, json.dumps(state) + "\n", overwrite=True)

    def _restore(self) -> bool:
        """Continue from ``<out>.partial`` when its last checkpoint has our key; False to start fresh."""
        try:
            state = json.loads((self._tmp / PROGRESS).read_text())
        except (OSError, ValueError):
            return False
        if state.get("key") != self.resume_key:
            return False
        keep = {PROGRESS}
        for split, entries in state["splits"].items():
            keep |= {f"{e['name']}{sfx}" for e in entries for sfx in self._suffixes(".bin", ".mask.bin", ".idx.npy")}
        opened = {}
        for split, e in state["open"].items():
            starts_path = self._tmp / f"{e['name']}.idx.partial.npy"
            try:
                starts = np.load(starts_path)
                for sfx, itemsize in ((".bin.tmp", self.dtype.itemsize), (".mask.bin.tmp", 1))[:1 + (self.kind == "sft")]:
                    path = self._tmp / f"{e['name']}{sfx}"
                    if path.stat().st_size < e["tokens"] * itemsize:
                        return False
                    os.truncate(path, e["tokens"] * itemsize)  # drop what was written after the checkpoint
                    keep.add(path.name)
            except (OSError, ValueError):
                return False
            if len(starts) != e["documents"]:
                return False
            opened[split] = (e, starts)
        if not all((self._tmp / name).is_file() for name in keep):
            return False
        for p in self._tmp.iterdir():  # shards completed after the last checkpoint are redone
            if p.name not in keep:
                p.unlink()
        self._splits = state["splits"]
        self._open = {s: _OpenShard(self._tmp, e["name"], self.kind == "sft", e["tokens"], starts.tolist())
                      for s, (e, starts) in opened.items()}
        self.position = state["position"]
        return True

    def _suffixes(self, *suffixes: str) -> tuple[str, ...]:
        return tuple(s for s in suffixes if self.kind == "sft" or not s.startswith(".mask"))

    # ---- finishing --------------------------------------------------------------------------------------------
    def _release(self) -> None:
        for cur in self._open.values():
            cur.close()
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
        for p in [self._tmp / PROGRESS, *self._tmp.glob("*.idx.partial.npy")]:
            p.unlink(missing_ok=True)
        (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._release()
            if self.resume_key is None:
                self._ctx.__exit__(exc_type, exc, tb)  # removes the temp dir; the body's exception propagates
            return False  # resumable: <out>.partial stays for the next run
        try:
            self._finish()
        except BaseException as e:
            self._release()
            if self.resume_key is None:
                self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        if self.resume_key is None:
            self._ctx.__exit__(None, None, None)  # renames the temp dir into place
        else:
            publish_dir(self._tmp, self.out_dir)
        return False


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """``np.save`` atomically (a reader never sees half an index)."""
    with atomic_file(path, overwrite=True) as f:
        np.save(f, arr)


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
    """One shard opened read-only: tokens, document starts (int64) and optional loss mask, all memory-mapped."""

    name: str
    tokens: np.ndarray
    doc_starts: np.ndarray
    mask: np.ndarray | None

    def doc_lengths(self) -> np.ndarray:
        """Tokens of each document (int64), from the memory-mapped starts."""
        return np.diff(np.append(np.asarray(self.doc_starts), len(self.tokens)))


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
            # Memory-mapped: a rank's memory does not grow with the number of documents.
            starts = np.load(idx_path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataFormatError(f"{idx_path}: unreadable document index ({e})") from None
        if starts.dtype != np.int64 or starts.shape != (n_doc,) or not _increasing_within(starts, n_tok):
            raise DataFormatError(f"{idx_path}: document index does not match manifest ({n_doc} docs, {n_tok} tokens)")
        mask = None
        if m["kind"] == "sft":
            mask_path = shard_dir / f"{name}.mask.bin"
            _check_size(mask_path, n_tok)
            mask = np.memmap(mask_path, dtype=np.uint8, mode="r", shape=(n_tok,))
        shards.append(Shard(name, tokens, starts, mask))
    return m, shards


def _increasing_within(starts: np.ndarray, n_tokens: int, block: int = 1 << 22) -> bool:
    """starts[0] == 0, strictly increasing, all < n_tokens; checked a block at a time (bounded memory)."""
    if len(starts) == 0:
        return True
    if starts[0] != 0 or starts[-1] >= n_tokens:
        return False
    for lo in range(0, len(starts) - 1, block):
        if np.any(np.diff(starts[lo:lo + block + 1]) <= 0):
            return False
    return True


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
    m = read_manifest(shard_dir)
    tok = m["tokenizer"]
    if tokenizer_dir is not None:
        check_fingerprint(tokenizer_dir, tok["fingerprint"], f"the shard set {shard_dir} (from {tok.get('path')})",
                          "re-run data.prepare with the run's tokenizer", error=IncompatibleShardsError)
    if vocab_size is not None and tok["vocab_size"] > vocab_size:
        raise IncompatibleShardsError(
            f"{shard_dir}: shard tokenizer has {tok['vocab_size']} ids but the model's vocab_size is {vocab_size}")
    return m
