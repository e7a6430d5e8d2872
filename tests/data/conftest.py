"""Shared fixtures for the data tests: tokenizers are built once per session (they cost seconds)."""
from __future__ import annotations

import numpy as np
import pytest

from data.reasoning import generate_problems


def _sample_texts() -> list[str]:
    import inspect
    import json as json_mod

    texts = [p["question"] + " " + p["solution"] for p in generate_problems(200, "train", seed=3)]
    texts += [inspect.getsource(json_mod), "Ünïcödé — 数学 🙂 \\frac{a}{b} x^2 + y_1 = 3.5e-2\n\t tabs"]
    return texts


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    return _sample_texts()


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory, sample_texts):
    from data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(sample_texts, 400, tmp_path_factory.mktemp("tok") / "bpe")


@pytest.fixture(scope="session")
def bpe_dir_other(tmp_path_factory, sample_texts):
    from data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(sample_texts[:50], 300, tmp_path_factory.mktemp("tok") / "bpe_other")


@pytest.fixture(scope="session")
def phi4mini_tok(phi4mini_dir):
    from data.tokenizer import load_tokenizer

    return load_tokenizer(phi4mini_dir)


@pytest.fixture(scope="session")
def phi4mini_dir(tmp_path_factory):
    from data.tokenizer import build_phi4mini_tokenizer

    return build_phi4mini_tokenizer(tmp_path_factory.mktemp("tok") / "phi4mini")


def fake_tokenizer_info(vocab_size: int = 1000, eos: int = 0) -> dict:
    return {"fingerprint": "f" * 64, "vocab_size": vocab_size, "special_token_ids": {"<|endoftext|>": eos},
            "eos_token_id": eos, "path": "fake"}


def write_docs(out_dir, docs, kind="pretrain", split="train", masks=None, vocab_size=1000, shard_tokens=1 << 20,
               extra_splits=None):
    """Write ``docs`` (lists of ids) as a shard set; returns its path."""
    from data.shards import ShardSetWriter

    with ShardSetWriter(out_dir, kind, fake_tokenizer_info(vocab_size), ["test"], shard_tokens=shard_tokens) as w:
        for i, d in enumerate(docs):
            w.add(split, np.asarray(d), None if masks is None else masks[i])
        for s, ds in (extra_splits or {}).items():
            for d in ds:
                w.add(s, np.asarray(d), None)
    return out_dir


@pytest.fixture
def make_shards():
    """``make_shards(out_dir, docs, kind=..., masks=..., vocab_size=..., shard_tokens=..., extra_splits=...)``."""
    return write_docs


@pytest.fixture
def fake_tok_info():
    return fake_tokenizer_info
