"""JSON outputs of evaluation, DPO and reports, written atomically through ``data.atomic``."""
from __future__ import annotations

import json
import os

from data.atomic import atomic_write_text


def write_json(path: str | os.PathLike, obj, overwrite: bool = False) -> None:
    """Pretty JSON at ``path`` (temp file + rename); an existing file is an error unless ``overwrite``."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", overwrite=overwrite)
