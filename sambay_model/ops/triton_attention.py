"""Attention with causal / sliding-window / document masks and GQA through PyTorch's FlexAttention,
which Inductor compiles into fused Triton kernels on CUDA (no flash-attn build needed).

Same contract as ``attention.attention_torch``. The masks become one FlexAttention ``mask_mod`` over absolute
positions (query i sits at Tk - Tq + i); its ``BlockMask`` lets the kernel skip fully masked tiles, so sliding
windows and packed documents cost O(visible pairs), not O(T^2). Calls with no mask to express (plain causal
prefill, a single decode query, bidirectional) go to SDPA, whose fused kernels are already the fast path.

One mask per visibility per forward: building a ``BlockMask`` evaluates the mask over all B x Tq x Tk pairs, so
the caller passes a ``MaskCache`` (the model keeps one per forward) and every call with the same (causal, window,
document ids, lengths) reuses the first call's mask: every layer of that window, both halves of a
differential-attention layer and the activation-checkpointed recompute.

Bounded compiles. On CUDA ``flex_attention`` and ``create_block_mask`` run under ``torch.compile`` (``compiled``):
- ``dynamic=True``: batch, lengths and window are symbols of the graph, so a new sequence length (DPO batches
  padded to their longest row, prefill, on-policy sampling) reuses the compiled graph instead of adding one;
  what still adds a graph is the grad mode and dtype of the call (flex only) and dynamo's size-1 specialisation
  (batch 1, or lengths within one 128-token block). ``dynamic=False`` compiled one graph per length and, after
  dynamo's recompile limit (8 per function), fell back to eager flex, which materialises B*H*Tq*Tk scores.
- every call has the same mask structure: no window becomes a window of Tk (it covers every key) and no document
  ids become one document of zeros, so sliding-window and full-attention layers share one graph instead of two
  (dynamo guards on whether a closure variable is None).
- ``fullgraph=True``: should the limit ever be reached, the call raises instead of silently running eager flex.
- the block mask is built under ``no_grad`` (nothing in it has a gradient), so training and evaluation share it.
Callers that pad (DPO batches, held-out scoring, generation prefill) round the width up to
``sambay_model.length_buckets`` on CUDA as well: whole blocks and, where the caller controls it, at least two, so
a padded call does not specialise on a single block.

On CPU (tests, under the Triton interpreter) they run eagerly: torch's unfused reference of the same semantics.
torch 2.13 refuses FlexAttention's backward on CPU at its entry check, so the CPU tests lift that check (see their
docstring).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch.fx.experimental import _config as fx_config
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from .attention import MaskCache, attention_torch, check_attention_args, tensor_identity


@functools.lru_cache(maxsize=None)
def compiled(fn: Callable, backend: str = "inductor") -> Callable:
    """``fn`` (flex_attention / create_block_mask) compiled once per process with the settings of the module
    docstring. Compiled, create_block_mask never materialises the [B, Tq, Tk] mask, and flex_attention becomes
    fused Triton kernels. ``backend="eager"`` is for tests on CPU: the same dynamo graphs, run by eager PyTorch.

    Traced without duck sizing: by default dynamo gives sizes that happen to be equal at the first call one symbol
    (e.g. a batch of 4 rows and 4 key blocks at 512 tokens) and compiles again once they differ."""
    graph = torch.compile(fn, dynamic=True, fullgraph=True, backend=backend)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with fx_config.patch(use_duck_shape=False):  # read when dynamo traces, inside this call
            return graph(*args, **kwargs)

    return run


def flex_functions(device: torch.device) -> tuple[Callable, Callable]:
    """``(create_block_mask, flex_attention)`` as calls on ``device`` run them: compiled on CUDA, eager elsewhere."""
    if device.type == "cuda":
        return compiled(create_block_mask), compiled(flex_attention)
    return create_block_mask, flex_attention


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


def mask_key(batch: int, Tq: int, Tk: int, *, causal: bool, window: int | None, doc_ids) -> tuple:
    """The ``MaskCache`` key of a block mask: everything ``block_mask`` builds it from."""
    return (batch, Tq, Tk, causal, window, tensor_identity(doc_ids))


def block_mask(batch: int, Tq: int, Tk: int, *, causal: bool, window: int | None, doc_ids, device: torch.device,
               masks: MaskCache | None = None) -> BlockMask:
    """The ``BlockMask`` of these queries and keys, from ``masks`` when it already holds it (module docstring)."""

    def build() -> BlockMask:
        # A copy: the ids come as views (slices of the forward's or the cache's ids), and a graph guards on a
        # view's strides and base, so views and plain tensors would compile apart.
        docs = doc_ids.clone() if doc_ids is not None else torch.zeros(batch, Tk, dtype=torch.long, device=device)
        mask_mod = visibility_mod(Tq, Tk, causal=causal, window=Tk if window is None else window, doc_ids=docs)
        make_mask = flex_functions(device)[0]
        with torch.no_grad():
            return make_mask(mask_mod, batch, None, Tq, Tk, device=device)

    if masks is None:
        return build()
    return masks.get(mask_key(batch, Tq, Tk, causal=causal, window=window, doc_ids=doc_ids), build)


def attention_flex(q, k, v, *, causal=True, window=None, doc_ids=None, scale=None, masks: MaskCache | None = None):
    """FlexAttention path; contract of ``attention.attention_torch``. ``masks``: the forward's ``MaskCache`` (None:
    build the mask for this call alone)."""
    check_attention_args(q, k, v, window, doc_ids, causal)
    Bsz, Hq, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if window is not None and window >= Tk:
        window = None  # the window covers every key
    plain = doc_ids is None and window is None
    if plain and (not causal or Tq == 1 or Tq == Tk):
        return attention_torch(q, k, v, causal=causal, scale=scale)
    mask = block_mask(Bsz, Tq, Tk, causal=causal, window=window, doc_ids=doc_ids, device=q.device, masks=masks)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    attend = flex_functions(q.device)[1]
    return attend(q, k, v, block_mask=mask, scale=scale, enable_gqa=Hq != Hkv)
