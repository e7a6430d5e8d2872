"""The Phi-4-mini chat format as a Jinja template with ``{% generation %}`` markers.

Rendering: ``<|system|>..<|end|><|user|>..<|end|><|assistant|>..<|end|>`` with no separators. The
generation block wraps the assistant content *and* its ``<|end|>``, so the assistant-token mask from
``apply_chat_template(..., return_assistant_tokens_mask=True)`` trains the model to emit the stop token
(TRL's assistant_only_loss also checks this).
"""
from __future__ import annotations

from typing import Any

from data.jsonl import DataFormatError

END_OF_TEXT = "<|endoftext|>"
END_OF_TURN = "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "tool": "<|tool|>"}

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|assistant|>' -}}"
    "{%- generation -%}{{- message['content'] + '<|end|>' -}}{%- endgeneration -%}"
    "{%- elif message['role'] in ['system', 'user', 'tool'] -%}"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>' -}}"
    "{%- else -%}"
    "{{- raise_exception('unknown chat role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


def check_messages(messages: Any, where: str, key: str = "messages") -> list[dict[str, str]]:
    """Check the messages of one conversation (``key`` names them in errors): a non-empty list of
    ``{role, content}`` strings with roles of ``ROLE_TOKENS``; returns them as plain ``{role, content}`` dicts."""
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(f"{where}: {key!r} must be a non-empty list of {{role, content}} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataFormatError(f"{where}: {key!r} message {i} must be an object with string 'role' and 'content'")
        if m["role"] not in ROLE_TOKENS:
            raise DataFormatError(f"{where}: {key!r} message {i} has unknown role {m['role']!r} (known: {list(ROLE_TOKENS)})")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def has_generation_markers(template: str | None) -> bool:
    """True when ``template`` marks assistant tokens with ``{% generation %}`` blocks."""
    return bool(template) and "generation" in template and "endgeneration" in template


def require_generation_markers(tokenizer, where: str) -> None:
    """Raise ValueError unless the tokenizer's chat template has generation markers.

    Without them ``return_assistant_tokens_mask`` returns all zeros, which would silently train on nothing
    (or, with a fallback, on the prompt): an error is the only safe answer.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not has_generation_markers(template):
        raise ValueError(
            f"{where}: the tokenizer's chat template has no {{% generation %}} markers, so assistant-only loss "
            "masks cannot be computed; use data.chat_template.CHAT_TEMPLATE or add the markers"
        )
