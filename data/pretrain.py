"""Text documents -> pretraining shard set: parallel tokenization, EOS-separated docs, seeded doc-level split."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from data.jsonl import DataFormatError, read_jsonl
from data.shards import ShardSetWriter, tokenizer_info

TEXT_SUFFIXES = (".txt", ".md", ".rst")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


def load_documents(files: Sequence[str | os.PathLike], text_field: str = "text"):
    """Load local text / JSONL / Parquet files as a ``datasets.Dataset`` with one ``text`` column.

    A text file is one document. JSONL/Parquet rows are documents, read from ``text_field``. Errors name the file
    (and the line for JSONL): bad UTF-8, malformed JSON, a missing field, an empty file.
    """
    import datasets

    if not files:
        raise ValueError("no input files given")
    parts = []
    for f in map(Path, files):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no such file")
        suffix = f.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line = raw[: e.start].count(b"\n") + 1
                raise DataFormatError(f"{f}:{line}: not valid UTF-8 (byte offset {e.start})") from None
            if not text.strip():
                raise DataFormatError(f"{f}: empty file")
            parts.append(datasets.Dataset.from_dict({"text": [text]}))
        elif suffix in JSON_SUFFIXES:
            # The strict reader gives file:line errors; datasets' json builder would only say "failed".
            rows = read_jsonl(f, required=(text_field,))
            for i, r in enumerate(rows):
                if not isinstance(r[text_field], str):
                    raise DataFormatError(f"{f}: record {i + 1}: field {text_field!r} is not a string")
            parts.append(datasets.Dataset.from_dict({"text": [r[text_field] for r in rows]}))
        elif suffix in PARQUET_SUFFIXES:
            ds = datasets.load_dataset("parquet", data_files=str(f), split="train")
            if text_field not in ds.column_names:
                raise DataFormatError(f"{f}: no column {text_field!r} (has {ds.column_names})")
            if len(ds) == 0:
                raise DataFormatError(f"{f}: empty file")
            parts.append(ds.select_columns([text_field]).rename_column(text_field, "text") if text_field != "text"
                         else ds.select_columns(["text"]))
        else:
            raise ValueError(f"{f}: unsupported file type {suffix!r} (use {TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES})")
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def document_split(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean array, True = validation document. Seeded, so the split is reproducible; each side gets >= 1 doc
    when there are at least two documents and ``0 < val_fraction < 1``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    is_val = np.random.default_rng(seed).random(n_docs) < val_fraction
    if val_fraction > 0 and n_docs >= 2:
        if not is_val.any():
            is_val[np.random.default_rng(seed).integers(n_docs)] = True
        if is_val.all():
            is_val[0] = False
    return is_val


@functools.lru_cache(maxsize=2)
def _cached_tokenizer(tokenizer_dir: str):
    from data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def _tokenize_batch(batch: dict, tokenizer_dir: str) -> dict:
    tok = _cached_tokenizer(tokenizer_dir)
    ids = tok(batch["text"], add_special_tokens=False)["input_ids"]
    return {"input_ids": [x + [tok.eos_token_id] for x in ids]}


def tokenize_texts(ds, tokenizer_dir: str | os.PathLike, num_proc: int = 1, batch_size: int = 64):
    """Add ``input_ids`` (text ids + EOS) to a dataset with a ``text`` column, in ``num_proc`` processes."""
    return ds.map(_tokenize_batch, batched=True, batch_size=batch_size, num_proc=num_proc if num_proc > 1 else None,
                  fn_kwargs={"tokenizer_dir": str(tokenizer_dir)}, remove_columns=ds.column_names,
                  desc="tokenize", load_from_cache_file=False)


def write_pretrain_shards(ds, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike, sources: Sequence[str],
                          val_fraction: float = 0.01, seed: int = 0, num_proc: int = 1,
                          shard_tokens: int = 1 << 26, overwrite: bool = False) -> Path:
    """Tokenize ``ds`` (column ``text``) and write a ``kind: pretrain`` shard set with splits train / val."""
    from tqdm.auto import tqdm

    info = tokenizer_info(tokenizer_dir)
    tokenized = tokenize_texts(ds, tokenizer_dir, num_proc=num_proc)
    is_val = document_split(len(tokenized), val_fraction, seed)
    with ShardSetWriter(out_dir, "pretrain", info, sources, shard_tokens=shard_tokens, overwrite=overwrite) as w:
        i = 0
        for batch in tqdm(tokenized.iter(batch_size=256), total=-(-len(tokenized) // 256), desc="write shards"):
            for ids in batch["input_ids"]:
                w.add("val" if is_val[i] else "train", np.asarray(ids, dtype=np.int64))
                i += 1
    return Path(out_dir)
