"""Assistant-only loss masks from any chat template, with no ``{% generation %}`` markers needed, by rendering
prefixes of the conversation (the published Phi-4-mini-flash template has no markers).

For a trained assistant message ``i`` of conversation ``m``, with ``ids(x)`` the template's token ids of ``x``:
- its start is ``len(ids(m[:i], add_generation_prompt=True))``: everything up to and including the generation
  prompt (``<|assistant|>``) is what inference feeds the model, so it is context, not target;
- its end is where ``ids(m[:i+1])`` and ``ids(m[:i+1] + [probe user message])`` part: the turn's own tokens
  (content and end-of-turn, ``<|end|>``) are shared, while what the template appends only to close a whole
  conversation (the published template's trailing ``eos_token``) is not, so it is not trained;
- the prefix property is checked, in tokens: the prompt and the turn through its end must both be prefixes of
  ``ids(m)``. A template that renders earlier turns differently from the last one, or a tokenizer that merges
  across the boundary, fails here with an error naming the record, instead of training on misplaced masks.
On a template that has markers around each assistant message's content and end-of-turn, these masks equal
``return_assistant_tokens_mask``'s (tests/data/test_chat_masks.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data.jsonl import DataFormatError

# A user turn appended after a turn to see where that turn ends (any content does; it is never trained on).
PROBE_MESSAGE = {"role": "user", "content": "?"}


class TemplateNotPrefixStableError(DataFormatError):
    """Rendering a conversation's prefixes does not give prefixes of its rendering: masks cannot be derived."""


def render_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    """The token ids of ``messages`` rendered by the tokenizer's chat template."""
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        add_generation_prompt=add_generation_prompt)
    return list(enc["input_ids"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def turn_span(tokenizer, messages: list[dict[str, str]], i: int, full: list[int], where: str) -> tuple[int, int]:
    """``[start, end)`` of assistant message ``i`` in ``full`` (= :func:`render_ids` of ``messages``)."""
    if i == 0:
        raise DataFormatError(f"{where}: the conversation starts with an assistant message; a trained turn needs "
                              "a prompt before it")
    prompt = render_ids(tokenizer, messages[:i], add_generation_prompt=True)
    done = render_ids(tokenizer, messages[:i + 1])
    end = _common_prefix(done, render_ids(tokenizer, messages[:i + 1] + [PROBE_MESSAGE]))
    if full[:len(prompt)] != prompt or done[:end] != full[:end] or done[:len(prompt)] != prompt \
            or end <= len(prompt):
        raise TemplateNotPrefixStableError(
            f"{where}: the chat template is not prefix-stable at message {i}: rendering the conversation up to this "
            "assistant turn does not give a prefix of the whole conversation's tokens, or the turn renders "
            "differently when another message follows (a template that renders earlier turns differently from the "
            "last, or text that merges into one token across the turn boundary), so the assistant-only loss mask "
            "cannot be derived from it")
    return len(prompt), end


def assistant_mask(tokenizer, messages: list[dict[str, str]], train_turns: Sequence[int],
                   where: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (int64) of the whole conversation and its 0/1 loss mask (uint8): 1 on the tokens of the
    assistant messages ``train_turns`` (their content and end of turn), 0 elsewhere."""
    full = render_ids(tokenizer, messages)
    mask = np.zeros(len(full), dtype=np.uint8)
    for i in train_turns:
        if messages[i]["role"] != "assistant":
            raise DataFormatError(f"{where}: message {i} is a {messages[i]['role']!r} turn, not an assistant turn")
        start, end = turn_span(tokenizer, messages, i, full, where)
        mask[start:end] = 1
    return np.asarray(full, dtype=np.int64), mask
