"""LM-head log-probabilities and the causal-LM loss without materialising ``[tokens, vocab]`` logits.

Full logits are the largest tensors of a training step: with the Phi-4-mini vocabulary (200,064) one 8,192-token
row needs 6.6 GB per fp32 copy, and a plain ``F.cross_entropy`` keeps three or four such copies alive in backward.
We therefore project through the head in tiles with TRL's ``ChunkedLogProbFunction`` (TRL is a core dependency,
and its ``DPOTrainer`` scores completions with the same kernel, so SFT/pretraining loss and DPO log-probs come from
one implementation): the forward folds each ``[4096 tokens, VOCAB_TILE]`` tile into online-logsumexp statistics,
the backward recomputes the tiles and accumulates the hidden/weight gradients in fp32. Memory is then bounded by
one tile whatever the sequence length and vocabulary. It reads the (tied) head weight directly, so tied
embeddings just receive the head's gradient.

Precision (``Phi4FlashConfig.lm_head_precision``, one of :data:`HEAD_PRECISIONS`): the log-sum-exp, the log-probs,
the loss and the gradient accumulation are fp32 in every mode; the mode picks how the tile GEMMs (forward and the
backward's recompute and gradient GEMMs) run on CUDA. ``fp32``: IEEE fp32 GEMMs (~60 TFLOP/s on an H100).
``tf32``: the same fp32 tensors, the GEMMs on the tensor cores in TF32 (operands rounded to a 10-bit mantissa,
fp32 accumulate and output; ~495 TFLOP/s). ``bf16``: TRL's kernel with bf16 operands (7-bit mantissa) and fp32
accumulation, the logits tile and the logits-gradient tile stored in bf16 (~990 TFLOP/s). The cuBLAS TF32 setting
is pinned only while the head runs (forward and backward) and restored after. Other devices run the head in fp32
whatever the key: a CPU has no tensor cores to use and its runs keep today's numbers.
"""
from __future__ import annotations

import functools
import types
from contextlib import contextmanager

import torch
from trl.kernels import ChunkedLogProbFunction as TRLChunkedLogProbFunction
from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

IGNORE_INDEX = -100  # the Hugging Face label of a position without a target
# Vocabulary columns per tile: a [4096, 8192] fp32 tile is 128 MB, a few of which live at once; large enough that
# the tile GEMMs run at full speed on a GPU.
VOCAB_TILE = 8192
HEAD_PRECISIONS = ("fp32", "tf32", "bf16")
# cuBLAS's fp32-GEMM setting (torch.backends.cuda.matmul.fp32_precision) while the head runs in each mode; the bf16
# mode's GEMMs take bf16 operands, so its fp32 setting only pins the few fp32 GEMMs left to IEEE.
_FP32_GEMM = {"fp32": "ieee", "tf32": "tf32", "bf16": "ieee"}
# Every per-token output TRL's fused head can give (trl.kernels.chunked_logprob.OPTIONAL_OUTPUTS and log_probs):
# a superset of what any TRL trainer asks for, at the price of a few extra reductions per tile.
TRL_HEAD_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _has_tensor_cores(device: torch.device) -> bool:
    """Whether the head's precision modes apply on ``device`` (tests emulate the CUDA condition through this)."""
    return device.type == "cuda"


def head_precision_on(device: torch.device, precision: str) -> str:
    """The mode the head runs in on ``device``: ``precision`` (``lm_head_precision``) on CUDA, else ``fp32``."""
    if precision not in HEAD_PRECISIONS:
        raise ValueError(f"lm_head_precision={precision!r}: expected one of {HEAD_PRECISIONS}")
    return precision if _has_tensor_cores(device) else "fp32"


@contextmanager
def _fp32_gemms(precision: str):
    """cuBLAS's fp32-GEMM setting for ``precision``, set for the head only and restored on exit. The new API is
    read and written (reading the legacy ``allow_tf32`` after a new-API write raises in torch >= 2.9)."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = _FP32_GEMM[precision]
    try:
        yield
    finally:
        matmul.fp32_precision = before


class ChunkedLogProbFunction(TRLChunkedLogProbFunction):
    """TRL's tiled log-prob kernel (same arguments, same outputs) plus one last argument: the head precision, already
    resolved for the device (:func:`head_precision_on`). TRL tiles in the autocast dtype when autocast is on, else in
    the hidden states' dtype, so the forward runs fp32 hidden states under bf16 autocast for ``bf16`` and without
    autocast otherwise; the backward recomputes the tiles in the dtype the forward chose. Both run with the mode's
    cuBLAS fp32-GEMM setting."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs,
                precision):
        ctx.precision = precision
        with _fp32_gemms(precision), torch.autocast(hidden.device.type, dtype=torch.bfloat16,
                                                    enabled=precision == "bf16"):
            return TRLChunkedLogProbFunction.forward(ctx, hidden, weight, bias, targets, temperature, chunk_size,
                                                     softcap, logit_scale, outputs)

    @staticmethod
    def backward(ctx, *grads):
        with _fp32_gemms(ctx.precision):
            return (*TRLChunkedLogProbFunction.backward(ctx, *grads), None)


def head_outputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, logits_multiplier: float,
                 precision: str, outputs: tuple[str, ...] = (), bias: torch.Tensor | None = None) -> tuple:
    """TRL's per-token outputs (log-probs, entropy, log_sum_sq_probs, mean_logits, is_top1; those not in ``outputs``
    are None) of ``softmax(logits_multiplier * (hidden @ weight.T + bias))`` for each row of ``hidden`` [N, H] and
    its target, in vocabulary tiles at ``precision`` (``lm_head_precision``, resolved for the device)."""
    mode = head_precision_on(hidden.device, precision)
    # Under DeepSpeed ZeRO-3 the head is read outside its module's forward hook: TRL's helper gathers it (and leaves
    # an already-gathered tied embedding alone).
    with torch.autocast(hidden.device.type, enabled=False), maybe_gather_lm_head_ctx(weight, bias):
        return ChunkedLogProbFunction.apply(hidden.float(), weight, bias, targets.to(hidden.device), 1.0, VOCAB_TILE,
                                            None, float(logits_multiplier), outputs, mode)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   logits_multiplier: float = 1.0, precision: str = "fp32") -> torch.Tensor:
    """fp32 ``log softmax(logits_multiplier * hidden @ weight.T)[target]`` for each row of ``hidden`` [N, H]
    (``targets`` [N], all valid), computed in vocabulary tiles at ``precision`` (the model's ``lm_head_precision``;
    fp32 when a caller has no model config); differentiable in ``hidden`` and ``weight``."""
    return head_outputs(hidden, weight, targets, logits_multiplier, precision)[0]


def shifted_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           logits_multiplier: float = 1.0,
                           precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs [B, T-1] with 0 where ignored, mask [B, T-1]) of each next-token label ``labels[:, 1:]`` given
    ``hidden`` [B, T, H]; only positions with a label other than ``IGNORE_INDEX`` are projected through the head."""
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != IGNORE_INDEX
    logps = token_logprobs(hidden[:, :-1][mask], weight, targets[mask], logits_multiplier, precision)
    # masked_scatter keeps an all-ignored micro-batch connected to the graph (a differentiable zero loss).
    return logps.new_zeros(mask.shape).masked_scatter(mask, logps), mask


def _fused_head_output(model, args: tuple, kwargs: dict, labels, shift_labels, num_items_in_batch):
    """What TRL's fused head returns for ``model(..., fused_lm_head=True)``, with our head precision: the backbone's
    hidden states scored at the next-token labels (or the pre-shifted ``shift_labels``), zero where ignored."""
    hidden = model.base_model(*args, **{**kwargs, "use_cache": False}).last_hidden_state
    if shift_labels is None:
        hidden, labels = hidden[:, :-1], labels[:, 1:]
    else:
        labels = shift_labels
    head = model.get_output_embeddings()
    hidden, labels = hidden.to(head.weight.device), labels.to(head.weight.device)
    mask = labels != IGNORE_INDEX
    per_token = head_outputs(hidden[mask], head.weight, labels[mask], model.config.logits_multiplier,
                             model.config.lm_head_precision, TRL_HEAD_OUTPUTS, head.bias)
    # masked_scatter keeps an all-ignored micro-batch connected to the graph, as in TRL.
    log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = (
        None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token)
    denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(loss=-log_probs.sum() / denom, log_probs=log_probs, entropy=entropy,
                               log_sum_sq_probs=log_sum_sq_probs, mean_logits=mean_logits, is_top1=is_top1,
                               label_mask=mask)


def precision_trl_head(model) -> None:
    """Make ``model(..., fused_lm_head=True)`` (how DPOTrainer scores completions, through the head TRL's
    ``add_fused_lm_head`` adds) run our head at ``config.lm_head_precision``, as our own loss does: TRL's head
    offers only fp32 or the ambient autocast dtype, and no TF32. The newest patch answers ``fused_lm_head=True``
    calls (temperature 1, what DPOTrainer uses), every other call falls through to the previous forward. ``model``
    may be wrapped (a DeepSpeed engine): the head goes on the module the wrapper calls."""
    core = getattr(model, "module", model)
    previous = core.forward

    @functools.wraps(type(core).forward)  # generate() validates its kwargs against this signature, as with TRL's
    def fused_forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                      **kwargs):
        if fused_lm_head:
            return _fused_head_output(self, args, kwargs, labels, shift_labels, num_items_in_batch)
        passed = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
        return previous(*args, **kwargs, **{k: v for k, v in passed.items() if v is not None})

    core.forward = types.MethodType(fused_forward, core)


def chunked_causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           logits_multiplier: float = 1.0,
                           num_items_in_batch: int | torch.Tensor | None = None,
                           precision: str = "fp32") -> torch.Tensor:
    """The fp32 next-token cross-entropy of the full logits (sum over targets / ``num_items_in_batch`` when
    given, else the mean over non-ignored targets), from the final hidden states and the head weight, with the
    head's GEMMs at ``precision`` (``lm_head_precision``)."""
    logps, mask = shifted_token_logprobs(hidden, weight, labels, logits_multiplier, precision)
    total = -logps.sum()
    if num_items_in_batch is None:
        denom = mask.sum().clamp(min=1)
    else:
        denom = torch.as_tensor(num_items_in_batch, device=total.device)
    return total / denom.to(total.dtype)
