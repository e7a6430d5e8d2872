"""Refuse to pair a model with data made by a different tokenizer (ids would mean different strings)."""
from __future__ import annotations

import os
from pathlib import Path

from data.tokenizer import fingerprint


class TokenizerMismatchError(ValueError):
    """A model export's tokenizer differs from the tokenizer the data was built with."""


def check_same_tokenizer(model_dir: str | os.PathLike, data_tokenizer_dir: str | os.PathLike) -> str:
    """Compare ``data.tokenizer.fingerprint`` of the export and the data's tokenizer; return the fingerprint."""
    model_dir, data_tokenizer_dir = Path(model_dir), Path(data_tokenizer_dir)
    model_fp = fingerprint(model_dir)
    data_fp = fingerprint(data_tokenizer_dir)
    if model_fp != data_fp:
        raise TokenizerMismatchError(
            f"tokenizer mismatch: the model at {model_dir} was trained with tokenizer {model_fp[:12]}, but the data "
            f"was built with {data_tokenizer_dir} (tokenizer {data_fp[:12]}); use a model and data from the same "
            f"tokenizer"
        )
    return model_fp
