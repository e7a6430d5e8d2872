"""The one wording of a missing-input error: ``<key>: <path> <what is wrong>; <how to get it>``.

Every stage checks the files it reads before minutes of work start; the error names the setting the path came
from (so the user knows what to override) and how to make the input. A path that is the default of an unset
setting inside a data directory (``dpo.heldout_file`` unset: ``<dpo.data_dir>/preference/heldout.jsonl``) also names
the directory's setting, the one to fix when the directory is wrong (:func:`require_setting`).
Here, below ``train/``, so that every stage (and ``data.prepare``) may use it.
"""
from __future__ import annotations

import os
from pathlib import Path


def require_input(path: str | os.PathLike, key: str, remedy: str | None = None, marker: str | None = None,
                  what: str = "the expected directory", under: str | None = None) -> Path:
    """``path`` as a Path when the input is there, else ``FileNotFoundError`` naming ``key`` and ``path``.

    remedy: how to get the input (default: run ``python -m data.prepare`` or set ``under`` or ``key``).
    marker: a file that must exist inside the directory ``path`` (default None: ``path`` itself must exist);
        ``what`` names such a directory in the error, e.g. "a model export" (default "the expected directory").
    under: the setting naming the directory ``path`` lies in, as the default of the unset ``key``; the error then
        names it too (default None: ``key`` names ``path`` itself).
    """
    path = Path(path)
    if remedy is None:
        remedy = "run `python -m data.prepare` or set " + (f"{under} or {key}" if under else key)
    why = f" ({key} is unset: this is its default under {under})" if under else ""
    if marker is None and not path.exists():
        raise FileNotFoundError(f"{key}: {path} does not exist{why}; {remedy}")
    if marker is not None and not (path / marker).is_file():
        raise FileNotFoundError(f"{key}: {path} is not {what} (no {marker}){why}; {remedy}")
    return path


def require_setting(value: str | os.PathLike | None, key: str, default: str | os.PathLike, under: str,
                    remedy: str | None = None, marker: str | None = None,
                    what: str = "the expected directory") -> Path:
    """The input the setting ``key`` names (``value``), or when it is unset (empty or None) its ``default``, a path
    inside the directory the setting ``under`` names; a missing one is an error naming ``key`` (and ``under``).

    remedy, marker, what: as in :func:`require_input` (defaults: its defaults).
    """
    if value:
        return require_input(value, key, remedy, marker, what)
    return require_input(default, key, remedy, marker, what, under=under)
