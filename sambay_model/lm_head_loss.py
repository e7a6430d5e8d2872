"""LM-head log-probabilities and the causal-LM loss without materialising ``[tokens, vocab]`` logits.

Full logits are the largest tensors of a training step: with the Phi-4-mini vocabulary (200,064) one 8,192-token
row needs 6.6 GB per fp32 copy, and a plain ``F.cross_entropy`` keeps three or four such copies alive in backward.
We therefore project through the head in tiles with TRL's ``ChunkedLogProbFunction`` (TRL is a core dependency,
and its ``DPOTrainer`` scores completions with the same kernel, so SFT/pretraining loss and DPO log-probs come from
one implementation): the forward folds each ``[4096 tokens, VOCAB_TILE]`` tile into online-logsumexp statistics,
the backward recomputes the tiles and accumulates the hidden/weight gradients in fp32. Memory is then bounded by
one tile whatever the sequence length and vocabulary. It reads the (tied) head weight directly, so tied
embeddings just receive the head's gradient.

The head and the cross-entropy run in fp32 even under autocast, as the published recipe does (a bf16 head gives
grad-norm spikes): hidden states are upcast, autocast is switched off, and each weight tile is cast to fp32.
"""
from __future__ import annotations

import torch
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import add_fused_lm_head, maybe_gather_lm_head_ctx

IGNORE_INDEX = -100  # the Hugging Face label of a position without a target
# Vocabulary columns per tile: a [4096, 8192] fp32 tile is 128 MB, a few of which live at once; large enough that
# the tile GEMMs run at full speed on a GPU.
VOCAB_TILE = 8192


def _gather_head(weight: torch.Tensor):
    """Under DeepSpeed ZeRO-3 the head weight is read outside the head module's forward hook, so gather it here
    (TRL's helper, which also leaves an already-gathered tied embedding alone)."""
    return maybe_gather_lm_head_ctx(weight)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   logits_multiplier: float = 1.0) -> torch.Tensor:
    """fp32 ``log softmax(logits_multiplier * hidden @ weight.T)[target]`` for each row of ``hidden`` [N, H]
    (``targets`` [N], all valid), computed in vocabulary tiles; differentiable in ``hidden`` and ``weight``."""
    with torch.autocast(hidden.device.type, enabled=False), _gather_head(weight):
        logps, *_ = ChunkedLogProbFunction.apply(
            hidden.float(), weight, None, targets.to(hidden.device), 1.0, VOCAB_TILE, None,
            float(logits_multiplier), ())
    return logps


def shifted_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           logits_multiplier: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs [B, T-1] with 0 where ignored, mask [B, T-1]) of each next-token label ``labels[:, 1:]`` given
    ``hidden`` [B, T, H]; only positions with a label other than ``IGNORE_INDEX`` are projected through the head."""
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != IGNORE_INDEX
    logps = token_logprobs(hidden[:, :-1][mask], weight, targets[mask], logits_multiplier)
    # masked_scatter keeps an all-ignored micro-batch connected to the graph (a differentiable zero loss).
    return logps.new_zeros(mask.shape).masked_scatter(mask, logps), mask


# Every per-token output TRL's fused head can give (trl.kernels.chunked_logprob.OPTIONAL_OUTPUTS and log_probs):
# a superset of what any TRL trainer asks for, at the price of a few extra reductions per tile.
TRL_HEAD_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def fp32_trl_head(model) -> None:
    """Make TRL's fused LM head (``model(..., fused_lm_head=True)``, how DPOTrainer scores completions) project and
    normalise in fp32 even under autocast, as our own loss does. DPOTrainer adds the head without TRL's
    ``cast_lm_head_to_fp32`` and offers no option for it, so we add it again on top with the cast on: the newest
    patch answers ``fused_lm_head=True`` calls, every other call falls through to the model's own forward.
    ``model`` may be wrapped (a DeepSpeed engine): the head goes on the module the wrapper calls."""
    add_fused_lm_head(getattr(model, "module", model), cast_lm_head_to_fp32=True, outputs=TRL_HEAD_OUTPUTS)


def chunked_causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           logits_multiplier: float = 1.0,
                           num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """The same fp32 loss as ``causal_lm_loss`` on the full logits (sum over targets / ``num_items_in_batch`` when
    given, else the mean over non-ignored targets), from the final hidden states and the head weight."""
    logps, mask = shifted_token_logprobs(hidden, weight, labels, logits_multiplier)
    total = -logps.sum()
    if num_items_in_batch is None:
        denom = mask.sum().clamp(min=1)
    else:
        denom = torch.as_tensor(num_items_in_batch, device=total.device)
    return total / denom.to(total.dtype)
