"""JSON files of evaluation, DPO and reports: written atomically through ``data.atomic``, read with errors
that name the file."""
from __future__ import annotations

import json
import os
from pathlib import Path

from data.atomic import atomic_write_text


def write_json(path: str | os.PathLike, obj, overwrite: bool = False) -> None:
    """Pretty JSON at ``path`` (temp file + rename); an existing file is an error unless ``overwrite``."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", overwrite=overwrite)


def read_json(path: str | os.PathLike):
    """The JSON value in ``path``; an unreadable file or invalid JSON is an error naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err.msg}, line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read ({err})") from None


def read_metrics(path: str | os.PathLike) -> dict:
    """A metrics object (``eval.json``, ``dpo_heldout.json``): :func:`read_json` that must give a JSON object."""
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}")
    return metrics
