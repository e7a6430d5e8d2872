"""Attention with causal / sliding-window / document masks and GQA through PyTorch's FlexAttention,
which Inductor compiles into fused Triton kernels on CUDA (no flash-attn build needed).

Same contract as ``attention.attention_torch``. The masks become one FlexAttention ``mask_mod`` over absolute
positions (query i sits at Tk - Tq + i); its ``BlockMask`` lets the kernel skip fully masked tiles, so sliding
windows and packed documents cost O(visible pairs), not O(T^2). Calls with no mask to express (plain causal
prefill, a single decode query, bidirectional) go to SDPA, whose fused kernels are already the fast path.

On CUDA ``flex_attention`` and ``create_block_mask`` run compiled (once per process). On CPU (tests, under the
Triton interpreter) they run eagerly: torch's unfused reference of the same semantics. torch 2.13 refuses
FlexAttention's backward on CPU at its entry check, so the CPU tests lift that check (see their docstring).
"""
from __future__ import annotations

import functools
import math

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from .attention import attention_torch, check_attention_args


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    """``fn`` (flex_attention / create_block_mask) compiled once per process. Compiled, create_block_mask never
    materialises the [B, Tq, Tk] mask, and flex_attention becomes fused Triton kernels."""
    return torch.compile(fn, dynamic=False)


def visibility_mod(Tq: int, Tk: int, *, causal: bool, window: int | None, doc_ids):
    """FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``: True where the query may attend the key."""
    offset = Tk - Tq

    def mask_mod(b, h, q_idx, kv_idx):
        p = q_idx + offset
        ok = kv_idx <= p if causal else kv_idx >= 0
        if window is not None:
            ok = ok & (p - kv_idx < window)
        if doc_ids is not None:
            ok = ok & (doc_ids[b, kv_idx] == doc_ids[b, p])
        return ok

    return mask_mod


def attention_flex(q, k, v, *, causal=True, window=None, doc_ids=None, scale=None):
    """FlexAttention path; contract of ``attention.attention_torch``."""
    check_attention_args(q, k, v, window, doc_ids, causal)
    Bsz, Hq, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if window is not None and window >= Tk:
        window = None  # the window covers every key
    plain = doc_ids is None and window is None
    if plain and (not causal or Tq == 1 or Tq == Tk):
        return attention_torch(q, k, v, causal=causal, scale=scale)
    mask_mod = visibility_mod(Tq, Tk, causal=causal, window=window, doc_ids=doc_ids)
    per_row = doc_ids is not None
    make_mask, attend = (_compiled(create_block_mask), _compiled(flex_attention)) if q.is_cuda else (
        create_block_mask, flex_attention)
    block_mask = make_mask(mask_mod, Bsz if per_row else None, None, Tq, Tk, device=q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    return attend(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=Hq != Hkv)
