"""Shard sets: round trip, dtype choice, manifest counts, compatibility checks, corruption, atomicity."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data.atomic import OutputExistsError
from data.jsonl import DataFormatError
from data.pretrain_shards import document_split
from data.shards import IncompatibleShardsError, ShardSetWriter, check_compatible, open_split, read_manifest, tokenizer_info


def test_round_trip_counts_and_multiple_shards(tmp_path, make_shards):
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 1000, size=rng.integers(1, 40)) for _ in range(50)]
    out = make_shards(tmp_path / "s", docs, shard_tokens=200, extra_splits={"val": docs[:3]})
    m = read_manifest(out)
    assert m["kind"] == "pretrain" and m["dtype"] == "uint16" and m["format_version"] == 1
    assert m["splits"]["train"]["tokens"] == sum(len(d) for d in docs)
    assert m["splits"]["train"]["documents"] == 50 and m["splits"]["val"]["documents"] == 3
    assert len(m["splits"]["train"]["shards"]) > 1
    _, shards = open_split(out, "train")
    got = []
    for s in shards:
        assert isinstance(s.tokens, np.memmap)
        assert len(s.tokens) <= 200 or s.doc_starts.size == 1
        bounds = list(s.doc_starts) + [len(s.tokens)]
        got += [np.asarray(s.tokens[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    assert len(got) == 50 and all(np.array_equal(a, b) for a, b in zip(got, docs))
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no temp dirs left


def test_uint32_when_vocab_does_not_fit_uint16(tmp_path, make_shards):
    out = make_shards(tmp_path / "big", [[70_000, 1, 65_536]], vocab_size=200_064)
    assert read_manifest(out)["dtype"] == "uint32"
    _, shards = open_split(out, "train")
    assert shards[0].tokens.dtype == np.uint32 and list(shards[0].tokens) == [70_000, 1, 65_536]
    assert make_shards(tmp_path / "small", [[65_535]], vocab_size=65_536) and read_manifest(tmp_path / "small")["dtype"] == "uint16"


def test_sft_masks_round_trip_and_are_required(tmp_path, make_shards):
    out = make_shards(tmp_path / "sft", [[1, 2, 3], [4, 5]], kind="sft", masks=[[0, 1, 1], [0, 1]])
    _, shards = open_split(out, "train")
    assert list(shards[0].mask) == [0, 1, 1, 0, 1]
    with pytest.raises(ValueError, match="needs loss mask"):
        make_shards(tmp_path / "sft2", [[1, 2]], kind="sft")
    assert not (tmp_path / "sft2").exists()


def test_out_of_range_token_is_refused(tmp_path, make_shards):
    with pytest.raises(ValueError, match="out of range"):
        make_shards(tmp_path / "bad", [[1, 5000]], vocab_size=1000)
    assert os.listdir(tmp_path) == []


def test_failure_leaves_nothing_behind(tmp_path, fake_tok_info):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardSetWriter(tmp_path / "s", "pretrain", fake_tok_info(), ["x"]) as w:
            w.add("train", np.array([1, 2, 3]))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="no documents"):
        with ShardSetWriter(tmp_path / "empty", "pretrain", fake_tok_info(), ["x"]):
            pass
    assert os.listdir(tmp_path) == []


def test_existing_output_not_overwritten_unless_asked(tmp_path, make_shards, fake_tok_info):
    out = make_shards(tmp_path / "s", [[1, 2, 3]])
    with pytest.raises(OutputExistsError, match="already exists"):
        make_shards(out, [[4, 5]])
    assert read_manifest(out)["splits"]["train"]["tokens"] == 3
    with ShardSetWriter(out, "pretrain", fake_tok_info(), ["x"], overwrite=True) as w:
        w.add("train", np.array([4, 5]))
    assert read_manifest(out)["splits"]["train"]["tokens"] == 2
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_shard_size_mismatch_names_the_shard(tmp_path, make_shards):
    out = make_shards(tmp_path / "s", [[1, 2, 3], [4, 5, 6]])
    with open(out / "train_00000.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(DataFormatError, match=r"train_00000\.bin: shard is 14 bytes.*implies 12"):
        open_split(out, "train")
    (out / "train_00000.bin").unlink()
    with pytest.raises(DataFormatError, match=r"train_00000\.bin: shard file missing"):
        open_split(out, "train")


def test_bad_manifest_and_index_errors(tmp_path, make_shards):
    out = make_shards(tmp_path / "s", [[1, 2, 3], [4, 5, 6]])
    np.save(out / "train_00000.idx.npy", np.array([0, 7]))
    with pytest.raises(DataFormatError, match=r"train_00000\.idx\.npy"):
        open_split(out, "train")
    m = json.loads((out / "manifest.json").read_text())
    del m["dtype"]
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataFormatError, match="lacks key 'dtype'"):
        read_manifest(out)
    with pytest.raises(FileNotFoundError, match="not a shard set"):
        read_manifest(tmp_path)


def test_check_compatible(tmp_path, bpe_dir, bpe_dir_other):
    with ShardSetWriter(tmp_path / "s", "pretrain", tokenizer_info(bpe_dir), ["x"]) as w:
        w.add("train", np.array([1, 2, 3]))
    m = check_compatible(tmp_path / "s", bpe_dir, 400)
    assert m["tokenizer"]["vocab_size"] == 400
    check_compatible(tmp_path / "s", bpe_dir, 512)  # a padded embedding is fine
    with pytest.raises(IncompatibleShardsError, match="tokenized with tokenizer"):
        check_compatible(tmp_path / "s", bpe_dir_other, 400)
    with pytest.raises(IncompatibleShardsError, match="vocab_size is 300"):
        check_compatible(tmp_path / "s", None, 300)


def test_document_split_is_seeded_and_by_document():
    a = document_split(1000, 0.1, seed=1)
    assert np.array_equal(a, document_split(1000, 0.1, seed=1))
    assert not np.array_equal(a, document_split(1000, 0.1, seed=2))
    assert 50 < a.sum() < 150
    assert document_split(2, 0.01, 0).sum() == 1  # both sides non-empty
    assert not document_split(5, 0.0, 0).any()
    with pytest.raises(ValueError):
        document_split(5, 1.0, 0)
