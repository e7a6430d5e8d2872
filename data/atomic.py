"""Atomic writes: outputs appear complete under their final name or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


class OutputExistsError(FileExistsError):
    """An output already exists and the caller did not ask to overwrite it."""


def check_writable(path: str | os.PathLike, overwrite: bool) -> None:
    """Raise OutputExistsError when ``path`` exists and ``overwrite`` is False."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True (overwrite=true in recipes) to replace it")


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh ``<out_dir>.tmp-XXXX`` directory; rename it to ``out_dir`` only if the block succeeds.

    On any exception the temporary directory is removed, so no half-written output is left behind.
    """
    out_dir = Path(out_dir)
    check_writable(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, out_dir)


def publish_dir(tmp: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Rename the complete directory ``tmp`` to ``out_dir``, replacing an existing ``out_dir`` (the caller
    checked ``overwrite``) without a moment where neither exists."""
    tmp, out_dir = Path(tmp), Path(out_dir)
    if out_dir.exists():
        # Move the old output aside first so a crash never loses both.
        old = Path(tempfile.mkdtemp(prefix=out_dir.name + ".old-", dir=out_dir.parent))
        os.replace(out_dir, old / "x")
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[IO[bytes]]:
    """Yield a temporary file next to ``path``, open for writing bytes; rename it to ``path`` only if the
    block succeeds (on any exception it is removed)."""
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename."""
    with atomic_file(path, overwrite) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)
