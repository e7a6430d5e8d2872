"""Streaming pretraining shards: same bytes for 1 or N workers, ids equal the HF tokenizer's, bounded chunks in
flight, resume after a crash (simulated and a real SIGKILL) gives the uninterrupted run's files."""
from __future__ import annotations


import numpy as np
import pytest

from data.documents import input_fingerprint, iter_documents
from data.pretrain_shards import streaming_split, write_pretrain_shards
from data.shards import PARTIAL_SUFFIX, PROGRESS, open_split, read_manifest
from data.tokenize_pool import tokenize_chunks
from data.tokenizer import backend_json
from tests.data.builders import files_of, random_corpus, write_shards


def test_workers_do_not_change_a_byte_and_ids_match_the_tokenizer(tmp_path, bpe_dir):
    from data.tokenizer import load_tokenizer

    files = [random_corpus(tmp_path / "a.jsonl", 150), random_corpus(tmp_path / "b.jsonl", 100, seed=1)]
    one = write_shards(files, bpe_dir, tmp_path / "one", num_proc=1)
    two = write_shards(files, bpe_dir, tmp_path / "two", num_proc=2, resumable=False)
    assert files_of(one) == files_of(two)
    m = read_manifest(one)
    assert len(m["splits"]["train"]["shards"]) > 3 and m["splits"]["val"]["documents"] > 5
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 250
    # Every shard is within the bound (no single document here exceeds it).
    assert all(s["tokens"] <= 3000 for sp in m["splits"].values() for s in sp["shards"])
    # Content: each document is the HF tokenizer's ids + EOS, in input order within its split.
    tok = load_tokenizer(bpe_dir)
    texts = list(iter_documents(files))
    is_val = streaming_split(0, len(texts), 0.1, 3)
    expected = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t, v in zip(texts, is_val) if not v]
    _, shards = open_split(one, "train")
    got = []
    for s in shards:
        bounds = list(s.doc_starts) + [len(s.tokens)]
        got += [s.tokens[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
    assert got == expected
    assert not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}")) and not list(tmp_path.glob("*.tmp-*"))


def test_split_depends_only_on_the_document_index():
    whole = streaming_split(0, 10_000, 0.3, 7)
    parts = np.concatenate([streaming_split(a, b - a, 0.3, 7) for a, b in [(0, 17), (17, 4100), (4100, 10_000)]])
    assert np.array_equal(whole, parts) and 0.27 < whole.mean() < 0.33
    assert not np.array_equal(whole, streaming_split(0, 10_000, 0.3, 8))


def test_both_splits_get_a_document(tmp_path, bpe_dir):
    out = write_pretrain_shards(["one doc", "another doc"], bpe_dir, tmp_path / "p", ["x"], val_fraction=0.01)
    assert {s: v["documents"] for s, v in read_manifest(out)["splits"].items()} == {"train": 1, "val": 1}


def test_chunks_in_flight_are_bounded(bpe_dir):
    consumed = []

    def chunks():
        for i in range(40):
            consumed.append(i)
            yield [f"text number {i}"] * 3

    tk_json = backend_json(bpe_dir)
    for workers in (1, 2):
        consumed.clear()
        for k, (ids, lengths) in enumerate(tokenize_chunks(chunks(), tk_json, 0, workers)):
            assert len(lengths) == 3 and len(consumed) <= k + 1 + 2 * workers  # never reads far ahead
        assert len(consumed) == 40


class _Crash(Exception):
    pass


def test_resume_after_a_crash_gives_the_uninterrupted_files(tmp_path, bpe_dir):
    files = [random_corpus(tmp_path / "c.jsonl", 400)]
    reference = files_of(write_shards(files, bpe_dir, tmp_path / "ref", resumable=False))
    out, skips = tmp_path / "out", []

    def crashing(skip):
        skips.append(skip)
        for i, text in enumerate(iter_documents(files, "text", skip)):
            if len(skips) == 1 and i == 250:
                raise _Crash  # e.g. the node went away mid-run
            yield text

    kw = {"val_fraction": 0.1, "seed": 3, "shard_tokens": 3000, "chunk_chars": 20_000,
          "input_id": input_fingerprint(files, "text")}
    with pytest.raises(_Crash):
        write_pretrain_shards(crashing, bpe_dir, out, [str(files[0])], **kw)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    assert not out.exists() and (partial / PROGRESS).is_file()  # nothing half-written under the final name
    write_pretrain_shards(crashing, bpe_dir, out, [str(files[0])], num_proc=2, **kw)
    assert 0 < skips[1] <= 250  # resumed after the last complete shard, not from zero
    assert files_of(out) == reference and not partial.exists()


def test_changed_input_starts_afresh(tmp_path, bpe_dir):
    f = random_corpus(tmp_path / "c.jsonl", 200)
    with pytest.raises(_Crash):
        def crashing(skip):
            yield from list(iter_documents([f], "text", skip))[:150]
            raise _Crash
        write_pretrain_shards(crashing, bpe_dir, tmp_path / "out", [str(f)], shard_tokens=3000, chunk_chars=20_000,
                              input_id=input_fingerprint([f], "text"))
    random_corpus(f, 120, seed=5)  # the user replaced the file: the partial run must not be reused
    out = write_shards([f], bpe_dir, tmp_path / "out", val_fraction=0.01, seed=0)
    ref = write_shards([f], bpe_dir, tmp_path / "ref", val_fraction=0.01, seed=0, resumable=False)
    assert files_of(out) == files_of(ref)


