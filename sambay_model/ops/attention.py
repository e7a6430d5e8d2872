"""Scaled dot-product attention with causal / sliding-window / document masks and GQA.

Conventions: q [B, Hq, Tq, d], k [B, Hkv, Tk, d], v [B, Hkv, Tk, dv] (dv may differ from d: differential
attention reads V of width 2d); query head h uses kv head h // (Hq // Hkv); query i sits at absolute position
Tk - Tq + i; ``window=w`` lets a query see itself and the previous w-1 keys; ``doc_ids`` [B, Tk] (queries
use the last Tq entries) blocks attention across documents. Padding is a document of its own (the model gives
padded runs their own segment ids), so every query sees at least its own key.

The pure-PyTorch path uses ``F.scaled_dot_product_attention`` (CPU and GPU; it is also what runs on GPU without
flash-attn). Sliding windows over long sequences run block by block, each query block against only the keys it
can see, so memory is O(T * w) instead of O(T^2); long masked full attention also runs in query blocks.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

# Sliding-window attention goes blockwise once the full key length exceeds this many windows; below it one
# masked SDPA call over all keys is cheaper than the Python loop over blocks.
BLOCKWISE_MIN_WINDOWS = 4
# Masked attention without a window runs in query blocks once one [B, Tq, Tk] mask would exceed this many entries
# (the additive fp32 mask of a 16K-token packed row would otherwise take 1 GiB per batch row).
MAX_MASK_ELEMENTS = 1 << 24


class MaskCache:
    """Attention masks of one forward pass, built on first use and shared by every later call that attends with
    the same visibility: every layer with the same window, both halves of a differential-attention layer, and the
    recompute of an activation-checkpointed layer (it runs with the same forward context, so it finds the masks of
    the first pass instead of building them again).

    Keys are built by the kernel adapter that owns the mask type (``triton_attention.mask_key``); a mask that
    depends on document ids is keyed on the ids' tensor identity (storage address, offset, shape and strides), which
    the cached mask keeps alive, so one cache must not outlive an in-place change of those ids (the model builds a
    new cache for every forward). Pure PyTorch attention builds its masks per call and ignores the cache.
    """

    def __init__(self) -> None:
        self._masks: dict[tuple, Any] = {}

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        """The mask under ``key``, from ``build()`` the first time."""
        if key not in self._masks:
            self._masks[key] = build()
        return self._masks[key]


def tensor_identity(t: torch.Tensor | None) -> tuple | None:
    """What identifies an unmodified tensor's values without reading them (a ``MaskCache`` key part)."""
    if t is None:
        return None
    return (t.device, t.dtype, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def check_attention_args(q, k, v, window, doc_ids, causal) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("attention: q, k, v must be 4-D [batch, heads, time, head_dim]")
    Bsz, Hq, Tq, d = q.shape
    _, Hkv, Tk, dk = k.shape
    if k.shape[0] != Bsz or v.shape[0] != Bsz or dk != d or v.shape[1] != Hkv or v.shape[2] != Tk:
        raise ValueError(
            f"attention: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if Hq % Hkv != 0:
        raise ValueError(f"attention: query heads ({Hq}) must be a multiple of kv heads ({Hkv})")
    if Tq > Tk:
        raise ValueError(f"attention: more queries ({Tq}) than keys ({Tk})")
    if window is not None:
        if window < 1:
            raise ValueError(f"attention: window must be >= 1, got {window}")
        if not causal:
            raise ValueError("attention: a sliding window needs causal=True")
    if doc_ids is not None and tuple(doc_ids.shape) != (Bsz, Tk):
        raise ValueError(f"attention: doc_ids must be [B, Tk] = {(Bsz, Tk)}, got {tuple(doc_ids.shape)}")


def build_mask(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    causal: bool,
    window: int | None,
    q_doc: torch.Tensor | None = None,
    k_doc: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Boolean visibility mask (True = may attend), broadcastable to [B, 1, Tq, Tk]; None = everything visible.

    q_pos [Tq], k_pos [Tk]: absolute positions. q_doc [B, Tq], k_doc [B, Tk]: document ids.
    """
    mask = None
    if causal:
        rel = q_pos[:, None] - k_pos[None, :]  # how far back the key is
        mask = rel >= 0
        if window is not None:
            mask = mask & (rel < window)
        mask = mask[None, None]
    if q_doc is not None:
        same = (q_doc[:, :, None] == k_doc[:, None, :])[:, None]
        mask = same if mask is None else mask & same
    return mask


def _sdpa(q, k, v, mask, scale, is_causal=False):
    """SDPA with GQA and a boolean visibility mask (None = all visible).

    The mask goes in as an additive float mask: SDPA converts boolean masks itself, and on CPU that conversion
    made masked calls ~1.5x slower.
    """
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale, enable_gqa=gqa)
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=gqa)


def _masked(q, k, v, *, causal, window, doc_ids, scale, i0=0, i1=None, j0=0, j1=None):
    """Queries [i0, i1) against keys [j0, j1) with an explicit mask (whole tensors by default)."""
    Tq, Tk = q.shape[2], k.shape[2]
    i1 = Tq if i1 is None else i1
    j1 = Tk if j1 is None else j1
    offset = Tk - Tq
    mask = build_mask(
        torch.arange(offset + i0, offset + i1, device=q.device),
        torch.arange(j0, j1, device=q.device),
        causal=causal,
        window=window,
        q_doc=doc_ids[:, offset + i0 : offset + i1] if doc_ids is not None else None,
        k_doc=doc_ids[:, j0:j1] if doc_ids is not None else None,
    )
    return _sdpa(q[:, :, i0:i1], k[:, :, j0:j1], v[:, :, j0:j1], mask, scale)


def _attention_blockwise(q, k, v, *, causal, window, doc_ids, scale, block):
    """One query block at a time against only the keys it can see (causal edge, window start)."""
    Tq, Tk = q.shape[2], k.shape[2]
    offset = Tk - Tq
    outs = []
    for i0 in range(0, Tq, block):
        i1 = min(Tq, i0 + block)
        j0 = max(0, offset + i0 - window + 1) if window is not None else 0
        j1 = offset + i1 if causal else Tk
        outs.append(_masked(q, k, v, causal=causal, window=window, doc_ids=doc_ids, scale=scale,
                            i0=i0, i1=i1, j0=j0, j1=j1))
    return torch.cat(outs, dim=2)


def attention_torch(q, k, v, *, causal=True, window=None, doc_ids=None, scale=None, block=None):
    """Attention with GQA and causal / window / document masks; returns [B, Hq, Tq, dv].

    Pure PyTorch (SDPA); see the module docstring for conventions, the contract of ``dispatch.attention``.
    ``scale`` defaults to 1/sqrt(d).

    ``block``: query rows per block on the blockwise paths (default: the window, or enough rows for a
    ``MAX_MASK_ELEMENTS`` mask).
    """
    check_attention_args(q, k, v, window, doc_ids, causal)
    Tq, Tk = q.shape[2], k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if window is not None and window >= Tk:
        window = None  # the window covers every key: plain causal attention
    plain = doc_ids is None and window is None
    if plain and (not causal or Tq == 1):
        return _sdpa(q, k, v, None, scale)  # a single last query sees every key
    if plain and Tq == Tk:
        return _sdpa(q, k, v, None, scale, is_causal=True)  # exact and uses SDPA's fused causal kernel
    kwargs = dict(causal=causal, window=window, doc_ids=doc_ids, scale=scale)
    if window is not None and Tk > BLOCKWISE_MIN_WINDOWS * window:
        return _attention_blockwise(q, k, v, block=block or window, **kwargs)
    mask_rows = q.shape[0] if doc_ids is not None else 1
    if mask_rows * Tq * Tk > MAX_MASK_ELEMENTS:
        # Long masked full attention (documents): bound the mask to [B, block, Tk] per call.
        return _attention_blockwise(q, k, v, block=block or max(1, MAX_MASK_ELEMENTS // (mask_rows * Tk)), **kwargs)
    return _masked(q, k, v, **kwargs)
