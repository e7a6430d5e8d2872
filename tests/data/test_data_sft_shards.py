"""SFT data: assistant-only labels end to end (template -> shards -> loader), strict chat input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from data.jsonl import DataFormatError
from data.loader import IGNORE_INDEX, PackedLoader
from data.reasoning import generate_problems
from data.sft_shards import read_chat_jsonl, reasoning_to_chat, tokenize_chat, write_sft_shards
from data.shards import read_manifest
from data.tokenizer import load_tokenizer

CHATS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Add 2 and 2."},
     {"role": "assistant", "content": "2 + 2 = 4. The answer is \\boxed{4}."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}],
]


def test_no_prompt_token_ever_carries_a_label(bpe_dir, tmp_path):
    tok = load_tokenizer(bpe_dir)
    convs = CHATS + [reasoning_to_chat(p)["messages"] for p in generate_problems(40, "train", seed=1)]
    out = write_sft_shards(convs, bpe_dir, tmp_path / "sft", ["test"], val_fraction=0.0)
    assert read_manifest(out)["kind"] == "sft"
    specials = {tok.convert_tokens_to_ids(t) for t in ("<|user|>", "<|system|>", "<|assistant|>")}
    loader = PackedLoader([(out, 1.0)], seq_len=256, global_batch_rows=4, split_documents=False, seed=0)
    trained_text, n_labels = [], 0
    for _ in range(10):
        b = loader.next_batch()
        for ids, labels, doc in zip(b["input_ids"], b["labels"], b["doc_ids"]):
            for d in doc.unique():
                sel = doc == d
                ids_d, lab_d = ids[sel].tolist(), labels[sel].tolist()
                # Every labelled token is inside an assistant turn: the nearest role token before it is <|assistant|>.
                role = None
                for t, l in zip(ids_d, lab_d):
                    if t in specials:
                        role = t
                        assert l == IGNORE_INDEX
                    if l != IGNORE_INDEX:
                        n_labels += 1
                        assert role == tok.convert_tokens_to_ids("<|assistant|>")
                        assert l == t
                if any(l != IGNORE_INDEX for l in lab_d):
                    trained_text.append(tok.decode([t for t, l in zip(ids_d, lab_d) if l != IGNORE_INDEX]))
    assert n_labels > 0
    # The assistant's <|end|> is trained (generation must learn to stop); user turns' <|end|> is not.
    assert any(t == "2 + 2 = 4. The answer is \\boxed{4}.<|end|>" for t in trained_text)
    assert any(t == "Hello!<|end|>Goodbye.<|end|>" for t in trained_text)


def test_template_without_generation_markers_is_an_error(bpe_dir, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(bpe_dir, plain)
    (plain / "chat_template.jinja").write_text(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}")
    tok = load_tokenizer(plain)
    with pytest.raises(ValueError, match="no \\{% generation %\\} markers"):
        tokenize_chat(tok, CHATS[0])  # write_sft_shards derives such masks instead (test_prepare_checkpoint_tokenizer)


def test_read_chat_jsonl_validates(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CHATS) + "\n")
    assert read_chat_jsonl(good) == CHATS
    cases = {
        "role": ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
                 "unknown role 'robot'"),
        "noassist": ({"messages": [{"role": "user", "content": "x"}]}, "no assistant message"),
        "content": ({"messages": [{"role": "user", "content": 3}]}, "string 'role' and 'content'"),
        "missing": ({"conversation": []}, "lacks required field"),
    }
    for name, (rec, msg) in cases.items():
        p = tmp_path / f"{name}.jsonl"
        p.write_text(json.dumps({"messages": CHATS[0]}) + "\n\n" + json.dumps(rec) + "\n")
        with pytest.raises(DataFormatError, match=rf"{name}\.jsonl:3: .*{msg}"):
            read_chat_jsonl(p)


def test_sft_val_split_and_mask_shape(bpe_dir, tmp_path):
    convs = [reasoning_to_chat(p)["messages"] for p in generate_problems(100, "train", seed=2)]
    out = write_sft_shards(convs, bpe_dir, tmp_path / "sft", ["x"], val_fraction=0.2, seed=0)
    m = read_manifest(out)
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 100
    assert 5 < m["splits"]["val"]["documents"] < 40
    ids, mask = tokenize_chat(load_tokenizer(bpe_dir), convs[0])
    assert ids.shape == mask.shape and mask.dtype == np.uint8 and 0 < mask.sum() < len(mask)


def _sft_set(out, bpe_dir, docs):
    """An SFT shard set from (length, first assistant position) pairs; the assistant part runs to the end."""
    from data.shards import ShardSetWriter, tokenizer_info

    with ShardSetWriter(out, "sft", tokenizer_info(bpe_dir), ["test"], shard_tokens=40) as w:
        for n, answer_from in docs:
            mask = np.zeros(n, dtype=np.uint8)
            mask[answer_from:] = 1
            w.add("train", np.arange(n) % 50 + 3, mask)
    return out


def test_overlong_conversations_are_counted_with_their_cut_answers(bpe_dir, tmp_path):
    from data.sft_shards import overlong_report

    # Fits; too long with part of its answer kept; too long with its whole answer cut (answer-less).
    out = _sft_set(tmp_path / "sft", bpe_dir, [(10, 4), (30, 12), (25, 22), (16, 10)])
    report = overlong_report(out, "train", seq_len=16)
    assert (report.conversations, report.overlong, report.answerless, report.longest) == (4, 2, 1, 30)
    assert report.loss_tokens == 6 + 18 + 3 + 6 and report.cut_loss_tokens == 14 + 3


def test_overlong_policy_errors_or_warns_never_silently(bpe_dir, tmp_path, caplog):
    from data.sft_shards import check_overlong

    out = _sft_set(tmp_path / "sft", bpe_dir, [(10, 4), (30, 12), (25, 22)])
    with pytest.raises(DataFormatError, match=r"sources\[0\]: 2 of 3 conversations are longer than seq_len=16.*"
                                               r"1 with no assistant token at all.*overlong=truncate"):
        check_overlong(out, "train", 16, "error", "sources[0]")
    with caplog.at_level("WARNING", logger="data.sft_shards"):
        check_overlong(out, "train", 16, "truncate", "sources[0]")
    assert "2 of 3 conversations are longer than seq_len=16" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="data.sft_shards"):
        assert check_overlong(out, "train", 30, "error", "sources[0]").overlong == 0  # all fit: nothing said
    assert caplog.text == ""
    with pytest.raises(ValueError, match="overlong='drop'"):
        check_overlong(out, "train", 16, "drop", "sources[0]")
