"""The forward context: what every layer of one forward needs beyond its input, built once by the backbone
(``Phi4FlashModel.forward``) from the call's ``doc_ids`` / ``position_ids``, ``attention_mask`` and cache.

Its core is the segment plan. Each row is cut into segments, maximal runs of tokens of one document with one
padding state, and no information crosses a segment boundary: attention sees only keys of the query's own segment
(``doc_ids``), Mamba's conv and scan restart where a segment starts (``resets``), and padding enters neither
(``real``; a run of padding is a segment of its own).

- Documents come from ``doc_ids`` (packed rows), else from ``position_ids`` that restart at 0 inside a row (TRL's
  padding-free batches; read only without cached tokens and for more than one new token).
- Padding comes from the new tokens' columns of the 2D ``attention_mask`` (1 = real token).
- With a cache, the plan of the cached tokens is the cache's (recorded when they were processed; their mask
  columns are not read again). The chunk's ids continue from the last cached one, and its first token starts a
  segment when its padding state differs from the last cached token's; the chunk's plan is then appended to the
  cache. A decode step thus costs O(new tokens).
- A forward with no documents, no padding and no cached plan carries no segment tensors at all (None), so every op
  takes its unmasked path.

``positions`` (RoPE of the Transformer++ baseline), ``keep_last`` (the linear prefill) and ``masks`` (attention
masks built once per forward) ride along.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import ops
from .cache import Phi4FlashCache


@dataclass
class ForwardContext:
    """Per-forward facts every layer needs, computed once by the backbone (:func:`build_forward_context`).

    doc_ids: ``[B, past + T]`` segment ids over every key position (padding forms its own segments), or None when
        each row is a single document without padding.
    resets: ``[B, T]`` True where a new segment starts in the current chunk (Mamba conv/scan reset), or None.
    real: ``[B, T]`` 1 for real tokens, 0 for padding in the current chunk, or None (no padding).
    keep_last: when > 0, the cross-decoder (and the full-attention layer's output) runs only on the last
        ``keep_last`` positions: the linear prefill of docs/architecture.md §8.
    positions: ``[T]`` absolute positions of the chunk (RoPE of the Transformer++ baseline only).
    backend: ``config.compute_backend``.
    last_visible: ``[B, past + T]`` True at the keys the last position may see (its own segment), or None (all):
        the mask of a single-query (decode) attention, built once per forward instead of once per layer.
    masks: the attention masks of this forward (``ops.MaskCache``, empty at first): the triton backend builds one
        FlexAttention block mask per distinct window and shares it across layers, both differential-attention
        halves and the activation-checkpointed recompute (which runs with this same context).
    """

    doc_ids: torch.Tensor | None
    resets: torch.Tensor | None
    real: torch.Tensor | None
    keep_last: int
    positions: torch.Tensor
    backend: str
    last_visible: torch.Tensor | None = None
    masks: ops.MaskCache = field(default_factory=ops.MaskCache)

    def key_doc_ids(self, num_keys: int) -> torch.Tensor | None:
        return None if self.doc_ids is None else self.doc_ids[:, -num_keys:]

    def last_query_visible(self, num_keys: int) -> torch.Tensor | None:
        return None if self.last_visible is None else self.last_visible[:, -num_keys:]


def build_forward_context(
    *, batch: int, length: int, past: int, device: torch.device, attention_mask, position_ids, doc_ids,
    keep_last: int, cache: Phi4FlashCache | None, backend: str,
) -> ForwardContext:
    """The context of a chunk of ``length`` new tokens after ``past`` cached ones (the module docstring's plan).
    With a cache that holds or starts a plan, the chunk's segment ids are recorded in it."""
    doc = _document_ids(doc_ids, position_ids, batch, length, past, device)
    real = _padding(attention_mask, batch, length, past, device)
    prior = cache.segments() if cache is not None and past else None
    positions = torch.arange(past, past + length, device=device)
    plain = dict(keep_last=keep_last, positions=positions, backend=backend)
    if doc is None and real is None and prior is None:
        return ForwardContext(doc_ids=None, resets=None, real=None, **plain)
    resets, chunk_seg = _chunk_segments(doc, real, batch, length, device, past, cache)
    if cache is not None:
        last_real = torch.ones(batch, dtype=torch.bool, device=device) if real is None else real[:, -1].bool()
        cache.record_segments(chunk_seg, last_real)
        seg = cache.segments()
    else:
        seg = chunk_seg
    return ForwardContext(doc_ids=seg, resets=resets, real=real, last_visible=seg == seg[:, -1:], **plain)


def _document_ids(doc_ids, position_ids, batch: int, length: int, past: int, device) -> torch.Tensor | None:
    """``[B, T]`` document ids of the chunk from ``doc_ids`` or restarting ``position_ids``; None: one document."""
    if doc_ids is not None:
        if past:
            raise ValueError("doc_ids (packed documents) cannot be combined with a non-empty cache")
        if doc_ids.shape != (batch, length):
            raise ValueError(f"doc_ids must have shape {(batch, length)}, got {tuple(doc_ids.shape)}")
        return doc_ids.to(device)
    if position_ids is not None and not past and length > 1:
        position_ids = position_ids.to(device).expand(batch, length)
        if bool((position_ids[:, 1:] == 0).any()):
            return _segments_from_position_ids(position_ids)
    return None


def _padding(attention_mask, batch: int, length: int, past: int, device) -> torch.Tensor | None:
    """``[B, T]`` 1/0 real/padding of the new tokens from the 2D ``attention_mask``; None: no padding."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, past + length):
        raise ValueError(
            f"attention_mask must be 2D [batch, past + new tokens] = [{batch}, {past + length}], "
            f"got {tuple(attention_mask.shape)}")
    new_mask = attention_mask[:, past:]
    return None if bool(new_mask.all()) else new_mask.to(device).long()


def _segments_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    starts = position_ids == 0
    starts[:, 0] = True
    return starts.long().cumsum(dim=1)


def _boundaries(seg: torch.Tensor) -> torch.Tensor:
    resets = torch.zeros_like(seg, dtype=torch.bool)
    resets[:, 1:] = seg[:, 1:] != seg[:, :-1]
    return resets


def _chunk_segments(doc, real, batch: int, length: int, device, past: int, cache: Phi4FlashCache | None):
    """(resets ``[B, T]``, segment ids ``[B, T]``) of a chunk: a segment starts wherever the document or the
    real/padding state changes, also against the last cached token (whose segment and state the cache keeps)."""
    doc = torch.zeros(batch, length, dtype=torch.long, device=device) if doc is None else doc.long()
    real_now = torch.ones(batch, length, dtype=torch.bool, device=device) if real is None else real.bool()
    resets = _boundaries(doc) | _boundaries(real_now.long())
    base = torch.zeros(batch, 1, dtype=torch.long, device=device)
    if past:
        prior = cache.segments() if cache is not None else None
        if prior is not None:
            base = prior[:, -1:].to(device)
            resets[:, 0] = real_now[:, 0] != cache.last_real().to(device)
        else:  # every cached token is real, one segment (id 0)
            resets[:, 0] = ~real_now[:, 0]
    return resets, base + resets.long().cumsum(dim=1)
