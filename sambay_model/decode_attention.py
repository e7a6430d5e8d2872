"""Attention of one query per row, at the last position, over cached K,V: the decode step (and the last prompt
position of the linear prefill).

A single query at the end of the keys needs no causal or window mask (the caller passes the keys it may see), so
this is two matrix products that read K and V once each, straight from the cache buffers (strided views, no copy):
``F.scaled_dot_product_attention`` on CPU falls back to its math kernel for GQA, which scales and repeats the whole
K,V per call, and differential attention's ``[V1|V2]`` concatenation copies V per call. Both grow with the context
at every step in every layer that reads the K,V, which is what made SambaY's decode latency track the context.
"""
from __future__ import annotations

import torch


def last_query_probs(q: torch.Tensor, k: torch.Tensor, scale: float,
                     visible: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax weights ``[B, Hkv, Hq // Hkv, N]`` (at least fp32) of q ``[B, Hq, 1, d]`` over k ``[B, Hkv, N, d]``.

    Query head h reads kv head ``h // (Hq // Hkv)`` (GQA): row ``h % (Hq // Hkv)`` of group ``h // (Hq // Hkv)``.
    ``visible`` ``[B, N]`` (True: the query may see the key) or None (every key). A row that sees no key gets zero
    weights, never NaN.
    """
    b, hq, tq, d = q.shape
    hkv = k.shape[1]
    if tq != 1 or hq % hkv:
        raise ValueError(f"last_query_attention: q {tuple(q.shape)} must be one query per row, heads a multiple of "
                         f"the kv heads of k {tuple(k.shape)}")
    # Queries of one kv head become the rows of one matrix product against that head's keys.
    qg = (q * scale).reshape(b, hkv, hq // hkv, d)
    scores = torch.matmul(qg, k.transpose(-1, -2)).to(torch.promote_types(q.dtype, torch.float32))
    if visible is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(~visible[:, None, None, :].to(torch.bool), float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no visible key: 0/0 in the softmax


def last_query_attention(
    q: torch.Tensor, k: torch.Tensor, values: tuple[torch.Tensor, ...], scale: float,
    visible: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """q ``[B, Hq, 1, d]``, k ``[B, Hkv, N, d]``, each v ``[B, Hkv, N, dv]``; returns ``[B, Hq, 1, dv]`` per v,
    all with the weights of ``last_query_probs``."""
    probs = last_query_probs(q, k, scale, visible)
    b, hq = q.shape[:2]
    return tuple(torch.matmul(probs.to(v.dtype), v).reshape(b, hq, 1, v.shape[-1]) for v in values)
