"""Phi4FlashCache: the decode state SambaY needs, and nothing more (docs/architecture.md §9.1).

- Mamba layers: conv state (the last ``d_conv - 1`` raw pre-conv inputs: all a width-``d_conv`` causal conv needs
  for the next token) and SSM state ``[B, d_inner, d_state]``.
- Sliding-window attention layers: K,V of the last ``window`` tokens (a rolling buffer, never longer).
- The single full-attention layer (L/2+1): K,V of every token seen; the cross-attention layers read it and
  write nothing. GMU memory is per token and is recomputed by layer L/2 each step, so it is not stored.
- ``backbone="transformer"``: every layer keeps full K,V (the baseline's ordinary KV cache).

K,V live in preallocated buffers that a decode step writes into in place: a ``torch.cat`` of the whole cache per
token would make every step cost O(context) in every caching layer, not only in the layers that read the shared
K,V. Full-attention buffers grow geometrically (``KV_GROWTH``), so appending is amortised O(1) per token; window
buffers hold two windows and slide back to the front once per window of tokens. ``nbytes()`` counts the used part
(the state itself, what the formula of docs/architecture.md §9.1 gives); ``nbytes_allocated()`` counts the buffers'
capacity.

The cache also keeps the segment plan (which cached tokens are padding or start a document) that the backbone builds
from the prompt's ``attention_mask`` / ``doc_ids`` once per generation; a decode step only extends it.
"""
from __future__ import annotations

import math

import torch
from transformers.cache_utils import Cache

from .configuration_phi4flash import Phi4FlashConfig

# A full-attention buffer that runs out of room is reallocated with this factor of headroom (25% at most unused:
# each token is copied at most 1 / (KV_GROWTH - 1) = 4 times on average), rounded up to KV_ALIGN tokens.
KV_GROWTH = 1.25
KV_ALIGN = 256


class TimeBuffer:
    """A tensor growing along one time dimension, written in place; ``view()`` is the used range [start, end)."""

    def __init__(self, first: torch.Tensor, dim: int, capacity: int):
        self.dim = dim
        shape = list(first.shape)
        shape[dim] = max(capacity, first.shape[dim])
        self.data = first.new_empty(shape)
        self.start, self.end = 0, first.shape[dim]
        self.data.narrow(dim, 0, self.end).copy_(first)

    def __len__(self) -> int:
        return self.end - self.start

    def view(self) -> torch.Tensor:
        return self.data.narrow(self.dim, self.start, self.end - self.start)

    def append(self, new: torch.Tensor, capacity: int) -> None:
        """Write ``new`` after the used range; slide the used range to the front or reallocate (to ``capacity``)
        when the buffer is full."""
        t = new.shape[self.dim]
        if self.end + t > self.data.shape[self.dim]:
            used = self.view().clone()
            if len(self) + t > self.data.shape[self.dim]:
                shape = list(self.data.shape)
                shape[self.dim] = max(capacity, len(self) + t)
                self.data = self.data.new_empty(shape)
            self.start, self.end = 0, used.shape[self.dim]
            self.data.narrow(self.dim, 0, self.end).copy_(used)
        self.data.narrow(self.dim, self.end, t).copy_(new)
        self.end += t

    def keep_last(self, n: int) -> None:
        self.start = max(self.start, self.end - n)

    def map_(self, fn) -> None:
        """Apply a batch-dimension transform (beam reorder, repeat) to the whole buffer."""
        self.data = fn(self.data)


def _full_capacity(tokens: int) -> int:
    return KV_ALIGN * math.ceil(KV_GROWTH * tokens / KV_ALIGN)


class Phi4FlashCache(Cache):
    """Per-layer decode state keyed by layer index; tensors are allocated by the first forward that uses them."""

    def __init__(self, config: Phi4FlashConfig):
        super().__init__(layers=[])
        self.config = config
        self.conv_states: dict[int, torch.Tensor] = {}
        self.ssm_states: dict[int, torch.Tensor] = {}
        self._keys: dict[int, TimeBuffer] = {}
        self._values: dict[int, TimeBuffer] = {}
        self._segments: TimeBuffer | None = None  # [B, seen] segment id per cached token; None: one real segment
        self._last_real: torch.Tensor | None = None  # [B] whether each row's last cached token is real
        self._seen_tokens = 0

    # --- what generate() asks of a cache -------------------------------------------------------------------------
    @property
    def is_compileable(self) -> bool:
        return False

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens processed so far (the same for every layer)."""
        return self._seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def advance(self, num_tokens: int) -> None:
        """Called once per model forward, after every layer has stored its state for these tokens."""
        self._seen_tokens += num_tokens

    # --- Mamba state -----------------------------------------------------------------------------------------------
    def mamba_state(self, layer_idx: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.conv_states.get(layer_idx), self.ssm_states.get(layer_idx)

    def set_mamba_state(self, layer_idx: int, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> None:
        self.conv_states[layer_idx] = conv_state
        self.ssm_states[layer_idx] = ssm_state

    # --- attention K,V --------------------------------------------------------------------------------------------
    @property
    def key_cache(self) -> dict[int, torch.Tensor]:
        """The cached keys per layer ``[B, Hkv, tokens kept, d]`` (views of the buffers' used part)."""
        return {i: b.view() for i, b in self._keys.items()}

    @property
    def value_cache(self) -> dict[int, torch.Tensor]:
        return {i: b.view() for i, b in self._values.items()}

    def update_kv(
        self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor, window: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, Hkv, T, d]`` K,V; return the cached-plus-new K,V the current queries attend over.

        With a window, only the last ``window`` tokens are kept afterwards (the returned K,V may be longer so that
        a long prompt's own queries still see their full windows). The returned tensors may be views of the
        buffers: valid until the next call for this layer.
        """
        kb, vb = self._keys.get(layer_idx), self._values.get(layer_idx)
        t = keys.shape[2]
        if kb is None or (window is not None and t >= window):
            # A first chunk, or one that replaces the whole window: attend over old + new directly and start
            # fresh buffers from what is kept (a long prompt's K,V are never copied into a window buffer).
            if kb is not None:
                keys, values = torch.cat([kb.view(), keys], dim=2), torch.cat([vb.view(), values], dim=2)
            kept = keys.shape[2] if window is None else min(window, keys.shape[2])
            capacity = _full_capacity(kept) if window is None else 2 * window
            self._keys[layer_idx] = TimeBuffer(keys[:, :, keys.shape[2] - kept:], 2, capacity)
            self._values[layer_idx] = TimeBuffer(values[:, :, values.shape[2] - kept:], 2, capacity)
            return keys, values
        capacity = _full_capacity(len(kb) + t) if window is None else 2 * window
        kb.append(keys, capacity)
        vb.append(values, capacity)
        k_att, v_att = kb.view(), vb.view()  # everything kept before plus the new tokens
        if window is not None:
            kb.keep_last(window)
            vb.keep_last(window)
        return k_att, v_att

    # --- segment plan (padding / documents of the cached tokens) --------------------------------------------------
    def segments(self) -> torch.Tensor | None:
        """``[B, seen]`` segment ids of the cached tokens, or None when every cached token is real, one document."""
        return None if self._segments is None else self._segments.view()

    def last_real(self) -> torch.Tensor | None:
        """``[B]`` bool: whether each row's last cached token is real (None: no plan, all real)."""
        return self._last_real

    def record_segments(self, segments: torch.Tensor, last_real: torch.Tensor) -> None:
        """Append the segment ids ``[B, T]`` of the tokens of this forward (before ``advance``)."""
        if self._segments is None:
            past = self._seen_tokens
            prior = torch.zeros(segments.shape[0], past, dtype=segments.dtype, device=segments.device)
            self._segments = TimeBuffer(torch.cat([prior, segments], 1), 1, _full_capacity(past + segments.shape[1]))
        else:
            self._segments.append(segments, _full_capacity(self._seen_tokens + segments.shape[1]))
        self._last_real = last_real

    # --- bookkeeping ----------------------------------------------------------------------------------------------
    def _buffers(self) -> list[TimeBuffer]:
        extra = [] if self._segments is None else [self._segments]
        return [*self._keys.values(), *self._values.values(), *extra]

    def nbytes(self) -> int:
        """Bytes of the cached model state (Mamba states and the K,V kept), what docs/architecture.md §9.1 counts."""
        states = [*self.conv_states.values(), *self.ssm_states.values()]
        kv = [b.view() for b in (*self._keys.values(), *self._values.values())]
        return sum(t.numel() * t.element_size() for t in states + kv)

    def nbytes_allocated(self) -> int:
        """Bytes the cache holds: Mamba states, K,V buffers at their capacity and the segment plan."""
        states = [*self.conv_states.values(), *self.ssm_states.values()]
        return (sum(t.numel() * t.element_size() for t in states)
                + sum(b.data.numel() * b.data.element_size() for b in self._buffers()))

    def _map_batch(self, fn) -> None:
        for store in (self.conv_states, self.ssm_states):
            for i, t in store.items():
                store[i] = fn(t)
        for b in self._buffers():
            b.map_(fn)
        if self._last_real is not None:
            self._last_real = fn(self._last_real)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t.index_select(0, indices.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, max_length: int) -> None:
        raise NotImplementedError(
            "Phi4FlashCache cannot be cropped: Mamba states cannot be rewound (assisted decoding is unsupported)"
        )

    def reset(self) -> None:
        for store in (self.conv_states, self.ssm_states, self._keys, self._values):
            store.clear()
        self._segments = self._last_real = None
        self._seen_tokens = 0

    def __repr__(self) -> str:
        return f"Phi4FlashCache(seen_tokens={self._seen_tokens}, nbytes={self.nbytes()})"
