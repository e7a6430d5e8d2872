"""Records of a user's own data set, from the file kinds a fine-tuner has: a JSONL file (``.jsonl``, optionally
``.gz`` / ``.zst``), a JSON file holding a list of objects (``.json``), a Parquet file (``.parquet``), a list of such
files (read in order), or a ``datasets`` ``save_to_disk`` directory (a ``Dataset``, or a ``DatasetDict`` with a
single split).

Every record comes with where it was read (``<file>: record N``, counting from 1), so a format error downstream names
the file and the record. A missing path is an error naming the config key it came from.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, load_from_disk

from data.jsonl import DataFormatError, iter_jsonl, open_binary

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


def data_paths(spec: str | Sequence[str], key: str) -> list[Path]:
    """The paths a data setting names (one path or a list of them); each must exist, else an error naming ``key``."""
    paths = [Path(spec)] if isinstance(spec, (str, Path)) else [Path(p) for p in spec]
    if not paths:
        raise ValueError(f"{key}: an empty list of data files")
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{key}: {p} does not exist; set {key} to a JSONL/JSON/Parquet file, a list of "
                                    "them, or a datasets save_to_disk directory")
    return paths


def read_records(spec: str | Sequence[str], key: str) -> list[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for every record of every path in ``spec``, in order (see the module docstring)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in data_paths(spec, key):
        got = list(_records_of(path, key))
        if not got:
            raise DataFormatError(f"{key}: {path} holds no records")
        out += got
    return out


def _records_of(path: Path, key: str) -> Iterator[tuple[str, dict[str, Any]]]:
    name = path.name.lower()
    if path.is_dir():
        yield from _rows(path, _saved_dataset(path, key).to_list())
    elif name.endswith(JSONL_SUFFIXES):
        yield from ((f"{path}: record {i + 1}", rec) for i, (_, rec) in enumerate(iter_jsonl(path)))
    elif name.endswith(".json"):
        yield from _rows(path, _json_list(path))
    elif name.endswith(".parquet"):
        yield from _rows(path, pq.read_table(path).to_pylist())
    else:
        raise DataFormatError(f"{key}: {path}: unknown file kind; expected .jsonl[.gz|.zst], .json, .parquet or a "
                              "datasets save_to_disk directory")


def _rows(path: Path, rows: list) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}: record {i + 1}: expected an object, got {type(row).__name__}")
        yield f"{path}: record {i + 1}", row


def _json_list(path: Path) -> list:
    with open_binary(path) as f:
        text = f.read().decode("utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}); a .json file holds one list "
                              "of records (one record per line: name it .jsonl)") from None
    if not isinstance(obj, list):
        raise DataFormatError(f"{path}: expected a JSON list of records, got {type(obj).__name__}")
    return obj


def _saved_dataset(path: Path, key: str) -> Dataset:
    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataFormatError(f"{key}: {path} is a directory but not a datasets save_to_disk directory ({e})") from None
    if isinstance(ds, DatasetDict):
        if len(ds) != 1:
            raise DataFormatError(f"{key}: {path} is a DatasetDict with splits {sorted(ds)}; point {key} at one "
                                  "split's directory")
        ds = next(iter(ds.values()))
    return ds
