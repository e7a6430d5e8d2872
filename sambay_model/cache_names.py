"""The name under which transformers hands the decode cache to a model and reads it back from its outputs.

transformers up to 5.23 calls it ``past_key_values`` (``cache_params`` for Mamba models); from 5.24 on
``GenerationMixin`` passes ``cache=`` to ``forward``, stores the cache in ``model_kwargs["cache"]`` and reads
``outputs["cache"]``, and the output dataclasses call the field ``cache``. The model accepts every name and
writes its outputs under the installed version's name, so generation keeps its context on both sides of the
rename without a deprecation warning per forward.
"""
from __future__ import annotations

import dataclasses

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

# The installed transformers' name: the output field, which generate() also uses as its model_kwargs key
# (its ``_update_model_kwargs_for_generation`` copies ``outputs[name]`` into ``model_kwargs[name]``).
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"
# Every name a caller or a transformers version may use for the cache.
CACHE_NAMES = ("cache", "past_key_values", "cache_params")


def pick_cache(**candidates):
    """The one cache given under any of ``CACHE_NAMES`` (None if none); two different caches are an error."""
    given = {name: value for name, value in candidates.items() if value is not None}
    distinct = {id(value) for value in given.values()}
    if len(distinct) > 1:
        raise ValueError(f"got different caches under {sorted(given)}; pass one cache, as `cache=`")
    return next(iter(given.values()), None)


def cache_in(mapping) -> object | None:
    """The cache held by a model_kwargs / model_inputs mapping under any known name."""
    return pick_cache(**{name: mapping.get(name) for name in CACHE_NAMES})


def check_left_padded(attention_mask: torch.Tensor) -> None:
    """Batched generation needs left padding: a right-padded row would decode its new tokens after its pads."""
    real = attention_mask.bool()
    padding_after_real = (real.long().cumsum(dim=1) > 0) & ~real
    bad_rows = padding_after_real.any(dim=1).nonzero().flatten().tolist()
    if bad_rows:
        raise ValueError(
            f"generate() needs left-padded prompts, but attention_mask rows {bad_rows} have padding after a real "
            "token (right padding); pad on the left (tokenizer.padding_side = 'left')")
