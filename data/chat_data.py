"""A user's chat data in TRL's formats as conversations with the turns to train on.

Two record formats, told apart per record:
- ``{"messages": [{"role", "content"}, ...]}`` (TRL's conversational language modelling): every assistant turn
  is trained.
- ``{"prompt": ..., "completion": ...}`` (TRL's prompt-completion), each a string or a list of messages: a string
  prompt becomes one user turn and a string completion one assistant turn (the checkpoint is a chat model, so
  its template frames both); only the completion's assistant turns are trained, never an assistant turn inside
  the prompt (few-shot examples).
Other keys of a record are ignored. Errors name the file and the record.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from data.chat_template import check_messages
from data.jsonl import DataFormatError
from data.records import data_paths, read_records


@dataclass(frozen=True)
class ChatExample:
    """One conversation: ``messages`` (``{role, content}`` dicts), ``train_turns`` (indices of the assistant
    messages whose tokens carry the loss, ascending, at least one) and ``where`` it came from."""

    messages: list[dict[str, str]]
    train_turns: tuple[int, ...]
    where: str


def _as_messages(value: Any, role: str, where: str, key: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return check_messages(value, where, key=key)


def chat_example(record: dict[str, Any], where: str) -> ChatExample:
    """The :class:`ChatExample` of one record (either format); DataFormatError naming ``where`` otherwise."""
    if "messages" in record:
        messages = check_messages(record["messages"], where)
        turns = tuple(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if not turns:
            raise DataFormatError(f"{where}: conversation has no assistant message, so nothing to train on")
        return ChatExample(messages, turns, where)
    if "prompt" in record and "completion" in record:
        prompt = _as_messages(record["prompt"], "user", where, "prompt")
        completion = _as_messages(record["completion"], "assistant", where, "completion")
        turns = tuple(len(prompt) + i for i, m in enumerate(completion) if m["role"] == "assistant")
        if not turns:
            raise DataFormatError(f"{where}: 'completion' has no assistant message, so nothing to train on")
        return ChatExample(prompt + completion, turns, where)
    raise DataFormatError(f"{where}: a chat record needs 'messages', or 'prompt' and 'completion' (TRL's formats); "
                          f"it has {sorted(record)}")


def iter_chat_examples(spec: str | os.PathLike | Sequence[str | os.PathLike], key: str) -> Iterator[ChatExample]:
    """Every record of the data setting ``key`` = ``spec`` (one path or a list; the file kinds of
    :mod:`data.records`) as a :class:`ChatExample`. One file is held in memory at a time."""
    for path in data_paths(spec, key):
        for where, record in read_records(str(path), key):
            yield chat_example(record, where)
