"""Fixtures shared by the tests/train/ modules (the builders they use are in builders.py)."""
import pytest

from tests.train.builders import (build_dpo_data, build_dpo_export, make_data, make_init_export, make_sft_shards,
                                  make_tokenizer)


@pytest.fixture(scope="module")
def sft_setup(tmp_path_factory):
    """A tokenizer, two SFT shard sets (a, b), a pretrain shard set (pre) and an initial export (init)."""
    root = tmp_path_factory.mktemp("sft")
    info = make_tokenizer(root, 0)
    return {"root": root, "a": make_sft_shards(root / "sft_a", info, seed=1),
            "b": make_sft_shards(root / "sft_b", info, seed=2), "pre": make_sft_shards(root / "pre", info, "pretrain"),
            "init": make_init_export(root)}


@pytest.fixture(scope="module")
def pretrain_shards(tmp_path_factory):
    """A pretrain shard set (train/val) and its tokenizer (builders.make_data); the shard-set path."""
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def dpo_data(tmp_path_factory):
    """A prepared-data directory for DPO (builders.build_dpo_data)."""
    return build_dpo_data(tmp_path_factory.mktemp("dpodata") / "data")


@pytest.fixture(scope="module")
def dpo_tiny(tmp_path_factory):
    """(data dir, export dir): DPO data and a tiny freshly initialised export with its tokenizer."""
    root = tmp_path_factory.mktemp("dpotiny")
    data = build_dpo_data(root / "data")
    return data, build_dpo_export(data, root / "export")
