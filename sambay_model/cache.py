"""SambaYCache: the decode state SambaY needs, and nothing more (spec section 5.1).

- Mamba layers: conv state (the last ``d_conv - 1`` raw pre-conv inputs: all a width-``d_conv`` causal conv needs
  for the next token) and SSM state ``[B, d_inner, d_state]``.
- Sliding-window attention layers: K,V of the last ``window`` tokens (a rolling buffer, never longer).
- The single full-attention layer (L/2+1): K,V of every token seen; the cross-attention layers read it and
  write nothing. GMU memory is per token and is recomputed by layer L/2 each step, so it is not stored.
- ``backbone="transformer"``: every layer keeps full K,V (the baseline's ordinary KV cache).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from .configuration_phi4flash import Phi4FlashConfig


class SambaYCache(Cache):
    """Per-layer decode state keyed by layer index; tensors are allocated by the first forward that uses them."""

    def __init__(self, config: Phi4FlashConfig):
        super().__init__(layers=[])
        self.config = config
        self.conv_states: dict[int, torch.Tensor] = {}
        self.ssm_states: dict[int, torch.Tensor] = {}
        self.key_cache: dict[int, torch.Tensor] = {}
        self.value_cache: dict[int, torch.Tensor] = {}
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
    def update_kv(
        self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor, window: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, Hkv, T, d]`` K,V; return the cached-plus-new K,V the current queries attend over.

        With a window, only the last ``window`` tokens are kept afterwards (the returned K,V may be longer so that
        a long prompt's own queries still see their full windows).
        """
        if layer_idx in self.key_cache:
            keys = torch.cat([self.key_cache[layer_idx], keys], dim=2)
            values = torch.cat([self.value_cache[layer_idx], values], dim=2)
        if window is None:
            self.key_cache[layer_idx], self.value_cache[layer_idx] = keys, values
        else:
            # .contiguous() so the kept buffer does not pin the whole prompt's K,V in memory.
            self.key_cache[layer_idx] = keys[:, :, -window:].contiguous()
            self.value_cache[layer_idx] = values[:, :, -window:].contiguous()
        return keys, values

    # --- bookkeeping ----------------------------------------------------------------------------------------------
    def _all_tensors(self) -> list[dict[int, torch.Tensor]]:
        return [self.conv_states, self.ssm_states, self.key_cache, self.value_cache]

    def nbytes(self) -> int:
        """Bytes held by all cached tensors."""
        return sum(t.numel() * t.element_size() for store in self._all_tensors() for t in store.values())

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for store in self._all_tensors():
            for i, t in store.items():
                store[i] = t.index_select(0, indices.to(t.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        for store in self._all_tensors():
            for i, t in store.items():
                store[i] = t.repeat_interleave(repeats, dim=0)

    def crop(self, max_length: int) -> None:
        raise NotImplementedError(
            "SambaYCache cannot be cropped: Mamba states cannot be rewound (assisted decoding is unsupported)"
        )

    def reset(self) -> None:
        for store in self._all_tensors():
            store.clear()
        self._seen_tokens = 0

    def __repr__(self) -> str:
        return f"SambaYCache(seen_tokens={self._seen_tokens}, nbytes={self.nbytes()})"
