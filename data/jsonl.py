"""Strict JSONL reading (streaming, optionally ``.gz`` / ``.zst`` compressed) and atomic JSONL writing.

Every error names the file and the 1-based line, because a silently skipped record in a training set is
much harder to find later than a crash now.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from data.atomic import atomic_write_text

try:  # optional: only ``.zst`` inputs need it, and the GPU image lacks it (bench/gpu_image_packages.txt)
    import zstandard
except ImportError:
    zstandard = None

COMPRESSED_SUFFIXES = (".gz", ".zst")


class DataFormatError(ValueError):
    """Input data is malformed; the message names the file and line (or shard)."""


@contextlib.contextmanager
def open_binary(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading bytes, decompressing ``.gz`` (gzip) and ``.zst`` (zstandard) on the fly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".gz":
        with gzip.open(path, "rb") as f:
            yield f
    elif suffix == ".zst":
        if zstandard is None:
            raise ModuleNotFoundError(f"{path}: reading a .zst file needs the zstandard package (pip install "
                                      "zstandard), which is not installed", name="zstandard")
        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as f:
            yield io.BufferedReader(f, buffer_size=1 << 20)
    else:
        with open(path, "rb", buffering=1 << 20) as f:
            yield f


def _decode_error(path: Path, lineno: int, line: bytes, e: UnicodeDecodeError | EOFError | OSError) -> DataFormatError:
    if isinstance(e, UnicodeDecodeError):
        return DataFormatError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start}: {line[e.start:e.start + 4]!r})")
    return DataFormatError(f"{path}:{lineno}: unreadable compressed data ({e})")


def iter_jsonl(path: str | os.PathLike, required: Sequence[str] = (), skip: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(line number, object)`` from a JSONL file; every object must contain the keys in ``required``.

    Memory is one line at a time. Blank lines are allowed (a trailing newline is common). An empty file,
    non-UTF-8 bytes, a line that is not a JSON object, or a missing key raise :class:`DataFormatError` naming
    ``path:line``. ``skip`` > 0 passes over the first ``skip`` records without parsing them (resuming): a
    resumed run already parsed them, so they were valid.
    """
    path = Path(path)
    seen = 0
    with open_binary(path) as f:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except (EOFError, OSError) as e:
                raise _decode_error(path, lineno + 1, b"", e) from None
            if not line:
                break
            lineno += 1
            if not line.strip():
                continue
            seen += 1
            if seen <= skip:
                continue
            yield lineno, _parse_line(path, lineno, line, required)
    if not seen:
        raise DataFormatError(f"{path}: empty file (no JSON records)")


def _parse_line(path: Path, lineno: int, line: bytes, required: Sequence[str]) -> dict[str, Any]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _decode_error(path, lineno, line, e) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise DataFormatError(f"{path}:{lineno}: record lacks required field(s) {missing}; has {sorted(obj)}")
    return obj


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """All records of a JSONL file as a list (small files: evaluation sets, chats); see :func:`iter_jsonl`."""
    return [obj for _, obj in iter_jsonl(path, required)]


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]], overwrite: bool = False) -> int:
    """Write ``records`` one JSON object per line, atomically; returns the number written."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines), overwrite=overwrite)
    return len(lines)
