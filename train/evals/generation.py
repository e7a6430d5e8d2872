"""Batched sampling from a chat model: loading an export to sample from, chat-template prompts, left padding,
``model.generate``, decoding.

Prompts are sorted by length before batching (less padding, so fewer wasted tokens on CPU) and the
completions are returned in the caller's order; on CUDA a batch's width is rounded up to a length bucket
(``sambay_model.length_buckets``), so compiled attention sees few prefill shapes. Generation stops at the model's
stop ids (``<|end|>`` and ``<|endoftext|>`` by the data contract) and completions are decoded without special
tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

import sambay_model  # noqa: F401  (registers Phi4Flash with the Auto classes)
from data.tokenizer import load_tokenizer, stop_token_ids
from sambay_model.length_buckets import bucket_length
from train.runtime.model_build import require_export
from train.runtime.model_mode import eval_mode


@dataclass
class SamplingConfig:
    """How completions are sampled.

    num_samples: completions per prompt, k (default 1).
    temperature: 0 (default) = greedy decoding; > 0 samples.
    top_p: nucleus sampling mass when temperature > 0 (default 1.0).
    max_new_tokens: generation budget per completion (default 96).
    batch_size: prompts per ``generate`` call (default 32; each expands to num_samples rows).
    seed: torch RNG seed set before sampling, so runs are repeatable (default 0).
    """

    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"sampling.num_samples must be >= 1, got {self.num_samples}")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.temperature == 0 and self.num_samples > 1:
            raise ValueError("sampling.num_samples > 1 with temperature 0 would repeat one greedy answer k times; "
                             "set sampling.temperature > 0")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("sampling.max_new_tokens and sampling.batch_size must be >= 1")


def resolve_device(device: str) -> str:
    """``auto``: cuda when available, else cpu; ``cpu`` and ``cuda`` as given (the schemas check the name)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(model_path: str | Path, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) from a local HF export directory (a stage's ``export/`` or a hub snapshot), in eval
    mode on ``device`` in ``dtype``; never a hub id. A missing directory is an error naming ``model_path``, the
    key of every entry point that loads a model this way."""
    model_path = require_export(model_path, key="model_path")
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=getattr(torch, dtype), local_files_only=True)
    return model.to(resolve_device(device)).eval(), load_tokenizer(model_path)


def conversation_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The model input for the next assistant turn of a conversation (``{role, content}`` messages): the
    tokenizer's own chat template with the assistant header appended."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_prompt(tokenizer, user_text: str) -> str:
    """The model input for one user turn: the chat template with the assistant header appended."""
    return conversation_prompt(tokenizer, [{"role": "user", "content": user_text}])


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], cfg: SamplingConfig, progress: bool = False) -> list[list[str]]:
    """``cfg.num_samples`` completions for each prompt (already chat-formatted text), in prompt order."""
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[-1]
    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[list[str]] = [[] for _ in prompts]
    torch.manual_seed(cfg.seed)
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    if progress:
        batches = tqdm(batches, desc="generate", unit="batch")
    with eval_mode(model):
        for batch in batches:
            width = bucket_length(max(len(encoded[i]) for i in batch), device)
            # Left padding keeps every prompt's last token in the final column, where decoding continues.
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = encoded[i]
                input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids):] = 1
            sample = cfg.temperature > 0
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=cfg.max_new_tokens, do_sample=sample,
                temperature=cfg.temperature if sample else None, top_p=cfg.top_p if sample else None,
                top_k=None, num_return_sequences=cfg.num_samples, eos_token_id=stops, pad_token_id=pad_id,
            )
            new_tokens = out[:, width:].tolist()
            for row, tokens in enumerate(new_tokens):
                # Cut at the first stop id: rows that finished early are padded afterwards.
                cut = next((j for j, t in enumerate(tokens) if t in stops), len(tokens))
                text = tokenizer.decode(tokens[:cut], skip_special_tokens=True)
                results[batch[row // cfg.num_samples]].append(text)
    return results
