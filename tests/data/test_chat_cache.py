"""The fine-tuning data cache (data.sft_cache): a kind-sft shard set of the user's chat data, tokenized with the
checkpoint's template and derived masks; reused when nothing changed, rebuilt when the data, the tokenizer or the
sequence length changes; the held-out split from eval data or a fraction."""
import json
import os
import shutil

import numpy as np
import pytest

from data.chat_data import iter_chat_examples
from data.chat_masks import assistant_mask
from data.shards import open_split, read_manifest
from data.sft_cache import ChatDataSpec, ensure_chat_cache
from data.tokenizer import fingerprint, load_tokenizer
from tests.train.hub_snapshot import PUBLISHED_CHAT_TEMPLATE


def chats(n, offset=0):
    return [{"messages": [{"role": "user", "content": f"what is {i} plus 3?"},
                          {"role": "assistant", "content": f"The answer is {i + 3}."}]} if i % 2 else
            {"prompt": f"what is {i} plus {i}?", "completion": f"{2 * i}"} for i in range(offset, offset + n)]


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture()
def published_tok(bpe_dir, tmp_path):
    """A tokenizer.json tokenizer with the published chat template (no generation markers)."""
    tok_dir = tmp_path / "tok"
    shutil.copytree(bpe_dir, tok_dir)
    (tok_dir / "chat_template.jinja").write_text(PUBLISHED_CHAT_TEMPLATE)
    return tok_dir


def spec(train, held_out=None, eval_fraction=0.0, seq_len=64):
    return ChatDataSpec(train=[train], held_out=held_out, eval_fraction=eval_fraction, seq_len=seq_len, seed=0)


def test_cache_holds_the_derived_tokens_and_masks(published_tok, tmp_path):
    data = write(tmp_path / "a.jsonl", chats(12))
    out = ensure_chat_cache(spec(data), published_tok, tmp_path / "cache")
    m = read_manifest(out)
    assert m["kind"] == "sft" and m["tokenizer"]["fingerprint"] == fingerprint(published_tok)
    assert m["splits"]["train"]["documents"] == 12 and "val" not in m["splits"]
    _, shards = open_split(out, "train")
    tok = load_tokenizer(published_tok)
    for k, ex in enumerate(iter_chat_examples(data, "sft.train_data")):
        ids, mask = assistant_mask(tok, ex.messages, ex.train_turns, ex.where)
        start = int(shards[0].doc_starts[k])
        assert shards[0].tokens[start:start + len(ids)].tolist() == ids.tolist()
        assert np.array_equal(shards[0].mask[start:start + len(ids)], mask)
    assert not any(p.suffix == ".safetensors" for p in out.rglob("*"))


def test_reused_when_equal_rebuilt_when_anything_changes(published_tok, tmp_path):
    data = write(tmp_path / "a.jsonl", chats(6))
    root = tmp_path / "cache"
    first = ensure_chat_cache(spec(data), published_tok, root)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert ensure_chat_cache(spec(data), published_tok, root) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    longer = ensure_chat_cache(spec(data, seq_len=128), published_tok, root)
    write(tmp_path / "a.jsonl", chats(7))
    more = ensure_chat_cache(spec(data), published_tok, root)
    assert read_manifest(more)["splits"]["train"]["documents"] == 7
    (published_tok / "chat_template.jinja").write_text(PUBLISHED_CHAT_TEMPLATE.replace("eos_token", "'\\n'"))
    retemplated = ensure_chat_cache(spec(data), published_tok, root)
    assert len({first, longer, more, retemplated}) == 4
    os.utime(data, ns=(1, 1))  # the same content with another modification time: rebuilt, to be safe
    assert ensure_chat_cache(spec(data), published_tok, root) != retemplated


def test_held_out_from_eval_data_or_fraction(published_tok, tmp_path):
    data = write(tmp_path / "a.jsonl", chats(200))
    held = write(tmp_path / "b.jsonl", chats(5, offset=500))
    out = ensure_chat_cache(spec(data, held_out=[held], eval_fraction=0.5), published_tok, tmp_path / "c1")
    splits = read_manifest(out)["splits"]
    assert splits["train"]["documents"] == 200 and splits["val"]["documents"] == 5
    out = ensure_chat_cache(spec(data, eval_fraction=0.1), published_tok, tmp_path / "c2")
    splits = read_manifest(out)["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 200 and 5 <= splits["val"]["documents"] <= 40


def test_a_bad_record_names_its_file_and_leaves_no_cache(published_tok, tmp_path):
    data = write(tmp_path / "a.jsonl", chats(3) + [{"prompt": "x"}])
    with pytest.raises(ValueError, match="a.jsonl: record 4"):
        ensure_chat_cache(spec(data), published_tok, tmp_path / "cache")
    assert not any(p.is_dir() for p in (tmp_path / "cache").iterdir())
