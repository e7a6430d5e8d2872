"""The length a padded batch is rounded up to before it reaches the model (DPO batches, held-out scoring, generation
prefill and on-policy sampling), so that compiled attention sees few distinct shapes.

The choice, on CUDA: the next multiple of ``PAD_MULTIPLE`` = 128 tokens, FlexAttention's block size, and at least
``MIN_PADDED_LENGTH`` = 2 blocks. A padded length never ends in a partial block, and a row gains at most 127
padding tokens (at most 6% of a 2,048-token row) or, when short, pads up to 256. Not powers of two: FlexAttention
is compiled with dynamic lengths (``sambay_model.ops.triton_attention``), so the number of graphs does not grow
with the number of distinct lengths and the cheapest rounding wins. The floor exists because dynamo specialises a
size of 1: a one-block length would compile graphs of its own (per grad mode and dtype), and with batch-1 calls
and fp32 sampling beside bf16 scoring that could approach dynamo's limit of 8 graphs per function. TRL's DPO
collator takes a multiple only (``pad_multiple``), so a DPO batch shorter than 128 tokens stays one block.
Elsewhere (CPU) nothing is compiled and padding would only add work: lengths stay as they are.

Padding changes no result: padding is a segment of its own (an ``attention_mask`` of 0) that no real token attends
to, or, right of every real token without a mask, positions a causal model's real tokens never see.
"""
from __future__ import annotations

import torch

PAD_MULTIPLE = 128  # FlexAttention's default block size (torch.nn.attention.flex_attention)
MIN_PADDED_LENGTH = 2 * PAD_MULTIPLE


def pad_multiple(device: torch.device | str) -> int:
    """What lengths on ``device`` are padded to a multiple of: ``PAD_MULTIPLE`` on CUDA, else 1 (no padding)."""
    return PAD_MULTIPLE if torch.device(device).type == "cuda" else 1


def bucket_length(length: int, device: torch.device | str) -> int:
    """The padded width of a batch whose longest row has ``length`` tokens, for a model on ``device``."""
    multiple = pad_multiple(device)
    if multiple == 1:
        return length
    return max(MIN_PADDED_LENGTH, -(-length // multiple) * multiple)
