"""SFT data: chat records (``{"messages": [...]}``) -> token ids + assistant-only loss masks -> shard sets.

Two mask sources: a template's ``{% generation %}`` markers (:func:`tokenize_chat`), and rendering prefixes
(``data.chat_masks``), which needs no markers, so the published template works as it is. :func:`write_chat_shards`
(a user's data for ``sft.train_data``) always derives; :func:`write_sft_shards` (``data.prepare``'s stages) uses
the markers where the template has them and derives otherwise (:func:`chat_ids_and_mask`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from data.chat_data import ChatExample
from data.chat_masks import assistant_mask
from data.chat_template import check_messages, has_generation_markers, require_generation_markers
from data.jsonl import DataFormatError, iter_jsonl
from data.pretrain_shards import SPLIT_BLOCK, document_split, streaming_split
from data.reasoning import format_prompt
from data.shards import ShardSetWriter, open_split, tokenizer_info
from data.tokenizer import load_tokenizer

log = logging.getLogger(__name__)
# What an SFT stage does with a conversation longer than its seq_len (the loader keeps its first seq_len tokens):
# "error" refuses to train; "truncate" trains on the kept part and warns with the counts.
OVERLONG_POLICIES = ("error", "truncate")


def validate_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """Check one SFT conversation (:func:`data.chat_template.check_messages`) with >= 1 assistant turn."""
    messages = check_messages(messages, where)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataFormatError(f"{where}: conversation has no assistant message, so nothing to train on")
    return messages


def read_chat_jsonl(path: str | os.PathLike) -> list[list[dict[str, str]]]:
    """Conversations from a JSONL file of ``{"messages": [...]}`` records; errors name ``path:line``."""
    return [validate_messages(rec["messages"], f"{path}:{lineno}")
            for lineno, rec in iter_jsonl(path, required=("messages",))]


def reasoning_to_chat(record: dict) -> dict:
    """A reasoning problem as an SFT conversation (user: format_prompt(question), assistant: solution)."""
    return {"messages": [{"role": "user", "content": format_prompt(record["question"])},
                         {"role": "assistant", "content": record["solution"]}]}


def tokenize_chat(tokenizer, messages: list[dict[str, str]], where: str = "chat") -> tuple[np.ndarray, np.ndarray]:
    """Ids and the 0/1 assistant mask (assistant content and its ``<|end|>``) of one conversation."""
    require_generation_markers(tokenizer, where)
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["assistant_masks"], dtype=np.uint8)
    if mask.shape != ids.shape or not mask.any():
        raise ValueError(f"{where}: assistant mask is empty or misaligned; the chat template's generation markers "
                         "do not cover any assistant token")
    return ids, mask


def chat_ids_and_mask(tokenizer, messages: list[dict[str, str]], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids and assistant mask of a conversation whose every assistant turn is trained: from the template's
    generation markers when it has them, else derived by rendering prefixes. Both give the same masks where both
    apply (tests/data/test_chat_masks.py); the markers are kept because they also cover a template that renders
    earlier turns differently from the last (e.g. one that strips reasoning), which derivation must refuse."""
    if has_generation_markers(getattr(tokenizer, "chat_template", None)):
        return tokenize_chat(tokenizer, messages, where)
    return assistant_mask(tokenizer, messages, [i for i, m in enumerate(messages) if m["role"] == "assistant"], where)


def write_sft_shards(conversations: Sequence[list[dict[str, str]]], tokenizer_dir: str | os.PathLike,
                     out_dir: str | os.PathLike, sources: Sequence[str], val_fraction: float = 0.0, seed: int = 0,
                     shard_tokens: int = 1 << 26, overwrite: bool = False) -> Path:
    """Tokenize conversations with the chat template and write a ``kind: sft`` shard set (splits train[/val]);
    every assistant turn is trained (:func:`chat_ids_and_mask`)."""
    tok = load_tokenizer(tokenizer_dir)
    info = tokenizer_info(tokenizer_dir, tok)
    is_val = document_split(len(conversations), val_fraction, seed)
    with ShardSetWriter(out_dir, "sft", info, sources, shard_tokens=shard_tokens, overwrite=overwrite) as w:
        for i, msgs in enumerate(tqdm(conversations, desc=f"sft {Path(out_dir).name}")):
            ids, mask = chat_ids_and_mask(tok, msgs, f"{sources[0] if sources else out_dir} record {i + 1}")
            w.add("val" if is_val[i] else "train", ids, mask)
    return Path(out_dir)


@dataclass
class ChatShardCounts:
    """What :func:`write_chat_shards` wrote: conversations and tokens per split, and the trained (loss) tokens."""

    train: int = 0
    val: int = 0
    train_tokens: int = 0
    val_tokens: int = 0
    loss_tokens: int = 0

    def add(self, split: str, ids: np.ndarray, mask: np.ndarray) -> None:
        setattr(self, split, getattr(self, split) + 1)
        setattr(self, f"{split}_tokens", getattr(self, f"{split}_tokens") + len(ids))
        self.loss_tokens += int(np.count_nonzero(mask))


def _held_out(val_fraction: float, seed: int) -> Iterator[bool]:
    """Whether each next conversation is held out: :func:`data.pretrain_shards.streaming_split`'s seeded draws,
    so a conversation's side depends only on its position (no need to know the count first)."""
    start = 0
    while True:
        yield from streaming_split(start, SPLIT_BLOCK, val_fraction, seed).tolist()
        start += SPLIT_BLOCK


def write_chat_shards(train: Iterable[ChatExample], held_out: Iterable[ChatExample] | None, tokenizer_dir: str | os.PathLike,
                      out_dir: str | os.PathLike, sources: Sequence[str], val_fraction: float, seed: int,
                      shard_tokens: int = 1 << 26) -> ChatShardCounts:
    """A ``kind: sft`` shard set of a user's chat data, tokenized with the tokenizer's own chat template and
    assistant masks derived without generation markers (:func:`data.chat_masks.assistant_mask`).

    ``held_out`` (the user's eval data) is the ``val`` split; when None, each training conversation goes to
    ``val`` with probability ``val_fraction`` (seeded by position). A ``train`` split with no conversation is an
    error naming ``sources[0]``.
    """
    tok = load_tokenizer(tokenizer_dir)
    info = tokenizer_info(tokenizer_dir, tok)
    counts = ChatShardCounts()
    split_of = _held_out(val_fraction if held_out is None else 0.0, seed)
    with ShardSetWriter(out_dir, "sft", info, sources, shard_tokens=shard_tokens) as w:
        for examples, forced in [(train, None)] + ([(held_out, "val")] if held_out is not None else []):
            for ex in tqdm(examples, desc=f"sft data {Path(out_dir).name}", mininterval=10):
                split = forced or ("val" if next(split_of) else "train")
                ids, mask = assistant_mask(tok, ex.messages, ex.train_turns, ex.where)
                w.add(split, ids, mask)
                counts.add(split, ids, mask)
        if not counts.train:
            raise DataFormatError(f"{sources[0]}: no conversation left for training (all {counts.val} held out); "
                                  "add data or lower the held-out fraction")
    return counts


@dataclass(frozen=True)
class OverlongReport:
    """Conversations of one SFT shard split longer than ``seq_len``.

    conversations: all conversations of the split; overlong: those longer than ``seq_len``; answerless: overlong
    ones whose kept first ``seq_len`` tokens hold no assistant (loss) token at all; cut_loss_tokens /
    loss_tokens: assistant tokens that truncation removes / all assistant tokens of the split; longest: the longest
    conversation, in tokens.
    """

    conversations: int
    overlong: int
    answerless: int
    cut_loss_tokens: int
    loss_tokens: int
    longest: int

    def describe(self, where: str, seq_len: int) -> str:
        return (f"{where}: {self.overlong} of {self.conversations} conversations are longer than seq_len={seq_len} "
                f"(longest {self.longest} tokens); truncation cuts {self.cut_loss_tokens} of {self.loss_tokens} "
                f"assistant tokens and leaves {self.answerless} with no assistant token at all")


def overlong_report(shard_dir: str | os.PathLike, split: str, seq_len: int) -> OverlongReport:
    """Count the conversations of an SFT shard split that a ``seq_len`` row cannot hold whole."""
    _, shards = open_split(shard_dir, split)
    n = overlong = answerless = cut = loss = longest = 0
    for sh in shards:
        lens = sh.doc_lengths()
        n += len(lens)
        loss += int(np.count_nonzero(sh.mask))
        longest = max(longest, int(lens.max(initial=0)))
        for d in np.flatnonzero(lens > seq_len):  # only the overlong ones are read
            start, end = int(sh.doc_starts[d]), int(sh.doc_starts[d]) + int(lens[d])
            overlong += 1
            cut += int(np.count_nonzero(sh.mask[start + seq_len:end]))
            answerless += int(not np.any(sh.mask[start:start + seq_len]))
    return OverlongReport(n, overlong, answerless, cut, loss, longest)


def check_overlong(shard_dir: str | os.PathLike, split: str, seq_len: int, policy: str, where: str) -> OverlongReport:
    """Apply an SFT stage's ``overlong`` policy (``OVERLONG_POLICIES``) to one source: "error" raises naming the
    source and the counts; "truncate" warns with them (and says how many examples keep no answer). Nothing is
    said when every conversation fits."""
    if policy not in OVERLONG_POLICIES:
        raise ValueError(f"{where}: overlong={policy!r}; expected one of {list(OVERLONG_POLICIES)}")
    report = overlong_report(shard_dir, split, seq_len)
    if report.overlong:
        message = report.describe(where, seq_len)
        if policy == "error":
            raise DataFormatError(f"{message}. Raise the stage's seq_len, filter the data, or set "
                                  f"overlong=truncate to train on the first seq_len tokens")
        log.warning("%s; training on the first %d tokens of each (overlong=truncate)", message, seq_len)
    return report

