"""The one wording of a missing-input error: ``<key>: <path> <what is wrong>; <how to get it>``.

Every stage checks the files it reads before minutes of work start; the error names the setting the path came
from (so the user knows what to override) and how to make the input. Here, below ``train/``, so that every stage
(and ``data.prepare``) may use it.
"""
from __future__ import annotations

import os
from pathlib import Path


def require_input(path: str | os.PathLike, key: str, remedy: str | None = None, marker: str | None = None,
                  what: str = "the expected directory") -> Path:
    """``path`` as a Path when the input is there, else ``FileNotFoundError`` naming ``key`` and ``path``.

    remedy: how to get the input (default: run ``python -m data.prepare`` or set ``key``).
    marker: a file that must exist inside the directory ``path`` (default None: ``path`` itself must exist);
        ``what`` names such a directory in the error, e.g. "a model export" (default "the expected directory").
    """
    path = Path(path)
    remedy = remedy if remedy is not None else f"run `python -m data.prepare` or set {key}"
    if marker is None and not path.exists():
        raise FileNotFoundError(f"{key}: {path} does not exist; {remedy}")
    if marker is not None and not (path / marker).is_file():
        raise FileNotFoundError(f"{key}: {path} is not {what} (no {marker}); {remedy}")
    return path
