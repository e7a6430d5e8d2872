"""Stream pretraining documents (text strings) from the local files users have, one at a time.

Formats (chosen by suffix; ``.gz`` / ``.zst`` compression is recognised on top of the text formats):
- ``.jsonl`` / ``.json``: JSON Lines, one object per line, the document in ``text_field``;
- ``.parquet``: one row per document, column ``text_field``, read one record batch at a time;
- ``.txt`` / ``.md`` / ``.rst``: the whole file is one document;
- a directory written by ``datasets.Dataset.save_to_disk``: one row per document (memory-mapped Arrow).
Errors name the file and the line (JSONL, text) or row (Parquet, datasets); memory does not depend on the
file sizes except for a text file, which is one document.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import datasets
import pyarrow.parquet as pq

from data.jsonl import COMPRESSED_SUFFIXES, DataFormatError, iter_jsonl, open_binary

TEXT_SUFFIXES = (".txt", ".md", ".rst")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
DATASETS_DIR_MARKERS = ("state.json", "dataset_info.json")
_BATCH_ROWS = 1024  # Arrow rows converted to Python strings at a time


def _format_suffix(path: Path) -> str:
    """The suffix naming the format: ``a.jsonl.zst`` -> ``.jsonl``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _iter_json(path: Path, text_field: str, skip: int) -> Iterator[str]:
    for lineno, rec in iter_jsonl(path, required=(text_field,), skip=skip):
        text = rec[text_field]
        if not isinstance(text, str):
            raise DataFormatError(f"{path}:{lineno}: field {text_field!r} is not a string ({type(text).__name__})")
        yield text


def _iter_text(path: Path, text_field: str, skip: int) -> Iterator[str]:
    if skip:
        return
    with open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: not valid UTF-8 (byte offset {e.start})") from None
    if not text.strip():
        raise DataFormatError(f"{path}: empty file")
    yield text


def _iter_arrow_batches(path: Path, batches, text_field: str, first_row: int) -> Iterator[str]:
    row = first_row
    for batch in batches:
        for text in batch.column(0).to_pylist():
            row += 1
            if not isinstance(text, str):
                raise DataFormatError(f"{path}: row {row}: field {text_field!r} is not a string ({type(text).__name__})")
            yield text


def _iter_parquet(path: Path, text_field: str, skip: int) -> Iterator[str]:
    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise DataFormatError(f"{path}: no column {text_field!r} (has {pf.schema_arrow.names})")
    if pf.metadata.num_rows == 0:
        raise DataFormatError(f"{path}: empty file")
    groups, first_row = [], 0
    for g in range(pf.num_row_groups):  # resuming skips whole row groups unread
        n = pf.metadata.row_group(g).num_rows
        if first_row + n <= skip:
            first_row += n
        else:
            groups.append(g)
    batches = pf.iter_batches(batch_size=_BATCH_ROWS, columns=[text_field], row_groups=groups)
    texts = _iter_arrow_batches(path, batches, text_field, first_row)
    for _ in range(skip - first_row):
        next(texts, None)
    yield from texts


def _load_saved_dataset(path: Path):
    """The ``datasets.Dataset`` a ``save_to_disk`` directory holds (one split, not a DatasetDict)."""
    ds = datasets.load_from_disk(str(path))
    if not isinstance(ds, datasets.Dataset):
        raise DataFormatError(f"{path}: a DatasetDict with splits {sorted(ds)}; pass one split's directory, e.g. {path}/train")
    return ds


def _iter_saved_dataset(path: Path, text_field: str, skip: int) -> Iterator[str]:
    ds = _load_saved_dataset(path)
    if text_field not in ds.column_names:
        raise DataFormatError(f"{path}: no column {text_field!r} (has {ds.column_names})")
    if len(ds) == 0:
        raise DataFormatError(f"{path}: empty dataset")
    table = ds.with_format("arrow").select_columns([text_field])
    for start in range(skip, len(ds), _BATCH_ROWS):  # rows are memory-mapped; one batch is in Python at a time
        yield from _iter_arrow_batches(path, [table[start:start + _BATCH_ROWS]], text_field, start)


_READERS: dict[str, Callable[[Path, str, int], Iterator[str]]] = {
    **{s: _iter_json for s in JSON_SUFFIXES}, **{s: _iter_text for s in TEXT_SUFFIXES},
    **{s: _iter_parquet for s in PARQUET_SUFFIXES},
}


def _reader(path: Path) -> Callable[[Path, str, int], Iterator[str]]:
    if path.is_dir():
        if all((path / m).is_file() for m in DATASETS_DIR_MARKERS) or (path / "dataset_dict.json").is_file():
            return _iter_saved_dataset
        raise ValueError(f"{path}: a directory but not one written by datasets' save_to_disk (no {DATASETS_DIR_MARKERS})")
    check_readable(path)
    suffix = _format_suffix(path)
    if suffix not in _READERS:
        known = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use {known}, optionally {COMPRESSED_SUFFIXES} "
                         "compressed, or a save_to_disk directory)")
    return _READERS[suffix]


def check_readable(path: str | os.PathLike) -> None:
    """Raise FileNotFoundError / PermissionError naming ``path`` unless it is a file this process can open."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise PermissionError(f"{path}: cannot be read ({e.strerror})") from None


def check_inputs(files: Sequence[str | os.PathLike]) -> None:
    """Fail before any work when an input is missing, unreadable or of an unknown kind."""
    if not files:
        raise ValueError("no input files given")
    for f in files:
        _reader(Path(f))


def iter_documents(files: Sequence[str | os.PathLike], text_field: str = "text", skip: int = 0) -> Iterator[str]:
    """Every document of ``files`` in order, as strings; ``skip`` passes over the first ``skip`` documents
    (resuming) without tokenizing them and, where the format allows, without parsing them."""
    check_inputs(files)  # now, not at the first next()
    return _iter_files([Path(f) for f in files], text_field, skip)


def _iter_files(files: list[Path], text_field: str, skip: int) -> Iterator[str]:
    for f in files:
        if skip:
            n = count_documents(f, text_field)
            if n <= skip:
                skip -= n
                continue
        yield from _reader(f)(f, text_field, skip)
        skip = 0


def count_documents(path: str | os.PathLike, text_field: str = "text") -> int:
    """Documents in ``path``, cheaply: JSONL lines are counted unparsed, Parquet / datasets from metadata."""
    path = Path(path)
    reader = _reader(path)
    if reader is _iter_text:
        return 1
    if reader is _iter_json:
        return _count_jsonl_records(path)
    if reader is _iter_parquet:
        return pq.ParquetFile(path).metadata.num_rows
    return len(_load_saved_dataset(path))


def _count_jsonl_records(path: Path) -> int:
    n = 0
    with open_binary(path) as f:
        for line in f:
            n += bool(line.strip())
    return n


def input_fingerprint(files: Sequence[str | os.PathLike], text_field: str) -> str:
    """Identity of the inputs for resuming: paths, sizes and modification times (of every file inside a
    save_to_disk directory), and the text field. A changed input starts a preparation afresh."""
    parts = []
    for f in map(Path, files):
        members = sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f]
        parts.append([[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in members])
    return json.dumps({"files": parts, "text_field": text_field})
