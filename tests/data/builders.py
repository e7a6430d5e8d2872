"""Shared builders and checks of the tests/data/ tests (fixtures are in conftest.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.documents import input_fingerprint, iter_documents
from data.jsonl import read_jsonl
from data.pretrain_shards import write_pretrain_shards
from data.shards import check_compatible

REPO = Path(__file__).resolve().parents[2]


# Conversations of the chat-template tests: a plain turn, a multi-turn one with a system prompt and a newline in
# an answer, and one ending on a user turn (context only).
CONVERSATIONS = [
    [{"role": "user", "content": "what is 2 plus 5?"}, {"role": "assistant", "content": "The answer is 7."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "what is 3 plus 4?"},
     {"role": "assistant", "content": "7"}, {"role": "user", "content": "and 9 plus 9?"},
     {"role": "assistant", "content": "The answer is 18.\nDone."}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the lazy dog"},
     {"role": "user", "content": "a trailing user turn is context only"}],
]


def check_prepared_layout(out: Path, n_stages=("basic", "math")):
    """The prepared-data layout of docs/design.md under ``out``, with no held-out question in SFT."""
    tok = out / "tokenizer"
    assert (tok / "tokenizer.json").is_file() and (tok / "generation_config.json").is_file()
    m = check_compatible(out / "pretrain", tok, None)
    assert m["kind"] == "pretrain" and set(m["splits"]) == {"train", "val"}
    for stage in n_stages:
        sm = check_compatible(out / "sft" / stage, tok, None)
        assert sm["kind"] == "sft"
        chats = read_jsonl(out / "sft" / f"{stage}.jsonl", required=("messages",))
        assert chats[0]["messages"][0]["role"] == "user"
    train = read_jsonl(out / "reasoning" / "train.jsonl", required=("id", "template_id", "question", "solution", "answer"))
    held = read_jsonl(out / "reasoning" / "heldout.jsonl", required=("id", "template_id", "question", "solution", "answer"))
    assert {r["template_id"] for r in train}.isdisjoint({r["template_id"] for r in held})
    # No held-out question (nor template) reaches SFT: user prompts are format_prompt(question) = question + "\n...".
    held_questions = {r["question"] for r in held}
    for stage in n_stages:
        for rec in read_jsonl(out / "sft" / f"{stage}.jsonl"):
            assert rec["messages"][0]["content"].split("\n")[0] not in held_questions
    for split in ("train", "heldout"):
        pairs = read_jsonl(out / "preference" / f"{split}.jsonl", required=("prompt", "chosen", "rejected"))
        assert pairs[0]["prompt"][0]["role"] == "user" and pairs[0]["chosen"][0]["role"] == "assistant"
    assert (out / "DONE").is_file()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def random_corpus(path: Path, n_docs: int, seed: int = 0) -> Path:
    """Random-word documents of very different lengths (not the demo corpus)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzéß数"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(1, 10))) for _ in range(2000)]
    with open(path, "w") as f:
        for _ in range(n_docs):
            words = rng.choice(vocab, size=int(rng.integers(1, 300)))
            f.write(json.dumps({"text": " ".join(words) + rng.choice(["", ".", "\n\n12 345"])}) + "\n")
    return path


def files_of(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def write_shards(files, tok, out, num_proc=1, resumable=True, **kw):
    kw = {"val_fraction": 0.1, "seed": 3, "shard_tokens": 3000, "chunk_chars": 20_000, **kw}
    return write_pretrain_shards(lambda skip: iter_documents(files, "text", skip), tok, out, [str(f) for f in files],
                                 num_proc=num_proc, input_id=input_fingerprint(files, "text") if resumable else None, **kw)
