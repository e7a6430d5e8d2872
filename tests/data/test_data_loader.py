"""PackedLoader: determinism, rank sharding, exact resume (also across world sizes), packing and labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.loader import IGNORE_INDEX, PackedLoader

MARK = 1  # first token of every test document


def _docs(n_docs, seed, lo=3, hi=60):
    """Documents starting with MARK; other tokens encode the stream position (unique, > MARK)."""
    rng = np.random.default_rng(seed)
    docs, pos = [], 0
    for _ in range(n_docs):
        n = int(rng.integers(lo, hi))
        docs.append([MARK] + list(range(pos + 2, pos + 1 + n)))
        pos += n
    return docs


@pytest.fixture
def pretrain_dir(tmp_path, make_shards):
    # Several shards, so rows straddle shard boundaries.
    return make_shards(tmp_path / "pre", _docs(120, 0), vocab_size=60_000, shard_tokens=900)


def _batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def _same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("input_ids", "labels", "doc_ids"))


def test_deterministic_and_seed_dependent(pretrain_dir):
    kw = dict(sources=[(pretrain_dir, 1.0)], seq_len=32, global_batch_rows=4)
    a, b = _batches(PackedLoader(**kw, seed=3), 5), _batches(PackedLoader(**kw, seed=3), 5)
    assert _same(a, b)
    assert not _same(a, _batches(PackedLoader(**kw, seed=4), 5))
    assert a[0]["input_ids"].shape == (4, 32) and a[0]["input_ids"].dtype == torch.long


def test_labels_and_doc_ids_follow_document_boundaries(pretrain_dir):
    loader = PackedLoader([(pretrain_dir, 1.0)], seq_len=40, global_batch_rows=8, seed=0)
    for batch in _batches(loader, 6):
        ids, labels, doc = batch["input_ids"], batch["labels"], batch["doc_ids"]
        starts = ids == MARK
        starts[:, 0] = True
        assert torch.equal(labels == IGNORE_INDEX, starts)
        assert torch.equal(labels[~starts], ids[~starts])
        new_doc = torch.ones_like(starts)
        new_doc[:, 1:] = doc[:, 1:] != doc[:, :-1]
        assert torch.equal(new_doc, starts)
        assert (doc[:, 0] == 0).all() and (doc.diff(dim=1) >= 0).all()


def test_one_epoch_visits_every_window_once_then_cycles(pretrain_dir):
    loader = PackedLoader([(pretrain_dir, 1.0)], seq_len=50, global_batch_rows=2, seed=1)
    n_windows = loader.tokens_per_epoch // 50
    rows = torch.cat([b["input_ids"] for b in _batches(loader, n_windows // 2)])
    starts = []
    for r in rows.numpy():
        vals = r[r != MARK]
        starts.append(int(vals[0]))
        # consecutive stream positions: values strictly increasing, gaps only where a MARK sits
        assert (np.diff(vals) >= 1).all() and (np.diff(vals) <= 2).all()
    assert len(set(starts)) == len(starts)  # no window twice within the epoch
    assert loader.epoch == pytest.approx(1.0 if n_windows % 2 == 0 else (n_windows - 1) / n_windows)
    more = _batches(loader, n_windows)  # keeps going past the end of the data
    assert len(more) == n_windows and loader.source_epochs[0] >= 1 and loader.epoch > 1.5


def test_ranks_partition_the_global_batch(pretrain_dir):
    kw = dict(sources=[(pretrain_dir, 1.0)], seq_len=24, global_batch_rows=6, seed=5)
    full = _batches(PackedLoader(**kw), 4)
    for world in (2, 3, 6):
        shares = [_batches(PackedLoader(**kw, rank=r, world_size=world), 4) for r in range(world)]
        for step in range(4):
            for key in ("input_ids", "labels", "doc_ids"):
                assert torch.equal(torch.cat([s[step][key] for s in shares]), full[step][key])


@pytest.mark.parametrize("split_documents", [True, False])
@pytest.mark.parametrize("resume_world", [1, 2, 4])
def test_resume_matches_uninterrupted_across_world_sizes(pretrain_dir, tmp_path, make_shards, split_documents,
                                                         resume_world):
    other = make_shards(tmp_path / "other", _docs(40, 9, hi=20), vocab_size=60_000)
    kw = dict(sources=[(pretrain_dir, 2.0), (other, 1.0)], seq_len=32, global_batch_rows=4, seed=2,
              split_documents=split_documents)
    reference = _batches(PackedLoader(**kw), 30)
    first = PackedLoader(**kw)
    _batches(first, 11)
    state = first.state_dict()
    resumed = [PackedLoader(**kw, rank=r, world_size=resume_world) for r in range(resume_world)]
    for loader in resumed:
        loader.load_state_dict(state)
    for step in range(11, 30):
        parts = [loader.next_batch() for loader in resumed]
        for key in ("input_ids", "labels", "doc_ids"):
            assert torch.equal(torch.cat([p[key] for p in parts]), reference[step][key])


def test_state_from_other_settings_is_refused(pretrain_dir):
    state = PackedLoader([(pretrain_dir, 1.0)], seq_len=32, global_batch_rows=4).state_dict()
    with pytest.raises(ValueError, match="seq_len=32"):
        PackedLoader([(pretrain_dir, 1.0)], seq_len=64, global_batch_rows=4).load_state_dict(state)
    with pytest.raises(ValueError, match="global_batch_rows"):
        PackedLoader([(pretrain_dir, 1.0)], seq_len=32, global_batch_rows=8).load_state_dict(state)


def test_sft_packing_keeps_documents_whole_and_masks_labels(tmp_path, make_shards):
    rng = np.random.default_rng(0)
    docs, masks = [], []
    for k in range(60):
        n = int(rng.integers(4, 30)) if k != 7 else 80  # doc 7 is longer than seq_len: truncated
        d = [MARK] + [1000 + k] * (n - 1)  # every token names its document
        m = [0] * (n // 2) + [1] * (n - n // 2)
        docs.append(d)
        masks.append(m)
    sft = make_shards(tmp_path / "sft", docs, kind="sft", masks=masks, vocab_size=5000)
    loader = PackedLoader([(sft, 1.0)], seq_len=48, global_batch_rows=4, seed=0, split_documents=False)
    seen = []
    for batch in _batches(loader, 12):
        for ids, labels, doc in zip(batch["input_ids"], batch["labels"], batch["doc_ids"]):
            for d in doc.unique():
                sel = doc == d
                toks = ids[sel]
                if toks[0] != MARK:  # padding: EOS id 0, ignored
                    assert (toks == 0).all() and (labels[sel] == IGNORE_INDEX).all()
                    assert d == doc.max()
                    continue
                k = int(toks[1]) - 1000
                n = min(len(docs[k]), 48)
                assert len(toks) == n  # whole (or truncated at seq_len) document, never split across rows
                expect = torch.tensor(docs[k][:n])
                expect[torch.tensor(masks[k][:n]) == 0] = IGNORE_INDEX
                expect[0] = IGNORE_INDEX
                assert torch.equal(labels[sel], expect)
                seen.append(k)
    assert set(seen) == set(range(60))  # 12 batches cover more than one epoch
    assert loader.tokens_per_epoch == sum(min(len(d), 48) for d in docs)


def test_mixture_weights_are_realised(tmp_path, make_shards):
    a = make_shards(tmp_path / "a", [[MARK] + [7] * 99] * 20, vocab_size=100)
    b = make_shards(tmp_path / "b", [[MARK] + [9] * 99] * 20, vocab_size=100)
    loader = PackedLoader([(a, 3.0), (b, 1.0)], seq_len=16, global_batch_rows=8, seed=0)
    rows = torch.cat([x["input_ids"] for x in _batches(loader, 250)])
    frac_a = ((rows == 7).any(dim=1)).float().mean().item()
    assert 0.72 < frac_a < 0.78
    again = torch.cat([x["input_ids"] for x in _batches(PackedLoader([(a, 3.0), (b, 1.0)], seq_len=16,
                                                                     global_batch_rows=8, seed=0), 250)])
    assert torch.equal(rows, again)


def test_bad_arguments(pretrain_dir):
    with pytest.raises(ValueError, match="not divisible"):
        PackedLoader([(pretrain_dir, 1.0)], global_batch_rows=6, world_size=4, rank=0)
    with pytest.raises(ValueError, match="weights"):
        PackedLoader([(pretrain_dir, -1.0)])
    with pytest.raises(ValueError, match="fewer than seq_len"):
        PackedLoader([(pretrain_dir, 1.0)], seq_len=10**7)
    with pytest.raises(KeyError, match="no split 'nope'"):
        PackedLoader([(pretrain_dir, 1.0)], split="nope")


def test_sources_with_different_tokenizers_are_refused(tmp_path, make_shards, pretrain_dir):
    import json

    other = make_shards(tmp_path / "o", [[MARK, 5, 6]] * 50, vocab_size=60_000)
    m = json.loads((other / "manifest.json").read_text())
    m["tokenizer"]["fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="different tokenizers"):
        PackedLoader([(pretrain_dir, 1.0), (other, 1.0)], seq_len=16, global_batch_rows=4)


def test_document_index_stays_memory_mapped(tmp_path, make_shards):
    """Per-rank memory must not grow with the number of documents: starts are read from the .idx.npy memmaps."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 1000, size=rng.integers(1, 12)) for _ in range(6000)]
    out = make_shards(tmp_path / "s", docs, kind="sft", masks=[np.ones(len(d)) for d in docs], shard_tokens=5000)
    loader = PackedLoader([(out, 1.0)], seq_len=32, global_batch_rows=4, split_documents=False)
    src = loader._sources[0]
    assert len(src.shards) > 5 and src.n_docs == 6000
    assert all(isinstance(s.doc_starts, np.memmap) for s in src.shards)
    in_memory = [v for v in vars(src).values() if isinstance(v, np.ndarray) and not isinstance(v, np.memmap)]
    assert in_memory and all(v.size <= len(src.shards) + 1 for v in in_memory)  # per-shard offsets only
    assert all(not v.flags.owndata and isinstance(v.base, np.memmap) for v in src._starts)  # views, not copies
    # Spans read through the memmaps are the documents as written.
    for d in (0, 1, 2999, 5999):
        start, length = src.document(d)
        assert np.array_equal(src.read(start, length)[0], docs[d])
    assert loader.tokens_per_epoch == sum(min(len(d), 32) for d in docs)
    # A row's doc ids count documents inside the row, across shard boundaries too.
    b = loader.next_batch()
    assert b["input_ids"].shape == (1 * 4, 32) and int(b["doc_ids"].min()) == 0
