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
def phi4mini_dir(tmp_path_factory):
    from data.tokenizer import build_phi4mini_tokenizer

    return build_phi4mini_tokenizer(tmp_path_factory.mktemp("tok") / "phi4mini")
