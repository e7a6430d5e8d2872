"""Preference pairs: strict loading, and held-out reward margin / preference accuracy of a DPO policy.

For a pair (x, y_w, y_l) the DPO implicit reward of completion y is ``beta * (log pi(y|x) - log ref(y|x))``
(summed over completion tokens). We report, on held-out pairs:

- ``heldout_reward_margin``: mean of reward(y_w) - reward(y_l);
- ``heldout_preference_accuracy``: share of pairs with reward(y_w) > reward(y_l);
- ``heldout_logp_accuracy_policy`` / ``_ref``: share of pairs where the model itself assigns y_w the higher
  log-probability (before training the policy is the reference, so the reward metrics start at 0 while these
  show what the SFT model already prefers).

Prompts and completions are tokenised like TRL does: for conversational data the chat template of the prompt with
the assistant header, then the rest of the rendered conversation as the completion; for standard (string) data the
prompt, then the completion with EOS (:func:`encode_pair_side`).

Precision and memory: the reference (the init model, before training) and the trained policy are scored under the
same rule as the training forward, ``torch.autocast(compute_dtype)`` over fp32 weights (see
``train.runtime.distributed.deepspeed_json``), and the head projects the hidden states in vocabulary tiles at the model's
``lm_head_precision`` with an fp32 log-sum-exp (``sambay_model.lm_head_loss``), as the training loss does, so no
``[rows, tokens, vocab]`` logits exist and the margin compares two log-probs computed alike.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from trl.data_utils import common_prefix_length

from data.preference import read_preference_data
from sambay_model.length_buckets import bucket_length
from sambay_model.lm_head_loss import IGNORE_INDEX, shifted_token_logprobs
from train.runtime.model_mode import eval_mode


def load_preference_pairs(path: str | Path, limit: int | None = None) -> list[dict]:
    """``{prompt, chosen, rejected}`` pairs of one file in any TRL preference format (``data.preference``: malformed
    records and chosen == rejected are errors naming the file and record); extra keys are dropped."""
    pairs = read_preference_data(str(path), key=str(path))
    return pairs[:limit] if limit else pairs


def encode_pair_side(tokenizer, prompt: list[dict] | str, completion: list[dict] | str,
                     max_length: int) -> tuple[list[int], int]:
    """(token ids, prompt length) of prompt + completion, truncated to ``max_length`` keeping the start.

    Conversational pairs: the chat template renders the prompt with the assistant header, the completion is the
    rest of the rendered conversation. Standard (string) pairs are tokenised as TRL's ``DPOTrainer`` does: the
    prompt, and prompt + completion + EOS (added when missing); the completion starts where the two diverge."""
    if isinstance(prompt, str):
        return _encode_standard(tokenizer, prompt, completion, max_length)
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("chat template renders the prompt differently with and without the completion; "
                         "cannot separate completion tokens")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    return (prompt_ids + completion_ids)[:max_length], len(prompt_ids)


def _encode_standard(tokenizer, prompt: str, completion: str, max_length: int) -> tuple[list[int], int]:
    eos = tokenizer.eos_token
    completion = completion if completion.endswith(eos) else completion + eos
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    full_ids = tokenizer(text=prompt + completion)["input_ids"]
    return full_ids[:max_length], common_prefix_length(prompt_ids, full_ids)


@torch.no_grad()
def completion_logps(model, tokenizer, pairs: list[dict], max_length: int, batch_size: int,
                     compute_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (float64) of chosen and rejected for each pair: two tensors [N].

    ``compute_dtype`` (``train.runtime.distributed.resolve_precision``): bf16 runs the backbone under bf16 autocast as
    training does; fp32 (the default) runs without autocast. The head runs at the model's ``lm_head_precision``
    either way (fp32 log-sum-exp; fp32 GEMMs off CUDA)."""
    rows = []
    for p in pairs:
        rows.append(encode_pair_side(tokenizer, p["prompt"], p["chosen"], max_length))
        rows.append(encode_pair_side(tokenizer, p["prompt"], p["rejected"], max_length))
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            # Right padding, to a length bucket on CUDA (sambay_model.length_buckets): padded positions come after
            # every real token, so a causal model never sees them.
            width = bucket_length(max(len(ids) for ids, _ in batch), device)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            for r, (ids, n_prompt) in enumerate(batch):
                input_ids[r, :len(ids)] = torch.tensor(ids)
                labels[r, n_prompt:len(ids)] = input_ids[r, n_prompt:len(ids)]
            with torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
                out.append(_summed_logps(model, input_ids.to(device), labels.to(device)).cpu())
    both = torch.cat(out)
    return both[0::2], both[1::2]


def _summed_logps(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row sum (float64) of the next-token log-probs of the non-ignored ``labels``: the backbone's hidden states
    go through the head in vocabulary tiles at the model's ``lm_head_precision`` (``lm_head_loss``), never as
    ``[rows, tokens, vocab]`` logits, with the model's muP++ logits multiplier applied as in its own forward. A
    wrapped model (DeepSpeed engine, DDP) is read through its ``module``."""
    core = getattr(model, "module", model)
    hidden = core.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
    logps, _ = shifted_token_logprobs(hidden, core.get_output_embeddings().weight, labels,
                                      core.config.logits_multiplier, core.config.lm_head_precision)
    return logps.double().sum(-1)


def preference_metrics(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                       ref_rejected: torch.Tensor, beta: float) -> dict:
    """Held-out DPO metrics from summed completion log-probs (see the module docstring)."""
    reward_chosen = beta * (policy_chosen - ref_chosen)
    reward_rejected = beta * (policy_rejected - ref_rejected)
    margin = reward_chosen - reward_rejected
    metrics = {
        "heldout_reward_margin": margin.mean().item(),
        "heldout_preference_accuracy": (margin > 0).double().mean().item(),
        "heldout_reward_chosen": reward_chosen.mean().item(),
        "heldout_reward_rejected": reward_rejected.mean().item(),
        "heldout_logp_margin_policy": (policy_chosen - policy_rejected).mean().item(),
        "heldout_logp_margin_ref": (ref_chosen - ref_rejected).mean().item(),
        "heldout_logp_accuracy_policy": (policy_chosen > policy_rejected).double().mean().item(),
        "heldout_logp_accuracy_ref": (ref_chosen > ref_rejected).double().mean().item(),
        "heldout_pairs": int(margin.numel()),
        "beta": beta,
    }
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in metrics.items()}
