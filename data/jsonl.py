"""Strict JSONL reading and atomic JSONL writing.

Every error names the file and the 1-based line, because a silently skipped record in a training set is
much harder to find later than a crash now.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from data.atomic import atomic_write_text


class DataFormatError(ValueError):
    """Input data is malformed; the message names the file and line (or shard)."""


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; every object must contain the keys in ``required``.

    Blank lines are allowed (a trailing newline is common). An empty file, non-UTF-8 bytes, a line that is
    not a JSON object, or a missing key raise :class:`DataFormatError` naming ``path:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataFormatError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start}: {line[e.start:e.start + 4]!r})") from None
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in required if k not in obj]
        if missing:
            raise DataFormatError(f"{path}:{lineno}: record lacks required field(s) {missing}; has {sorted(obj)}")
        records.append(obj)
    if not records:
        raise DataFormatError(f"{path}: empty file (no JSON records)")
    return records


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]], overwrite: bool = False) -> int:
    """Write ``records`` one JSON object per line, atomically; returns the number written."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines), overwrite=overwrite)
    return len(lines)
