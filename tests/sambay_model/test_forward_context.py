"""The segment plan (sambay_model/forward_context.py): documents, padding and the cache become the forward context's
resets, segment ids, real-token mask and last-query visibility. End-to-end equivalences (a packed row equals its
documents run alone, padded generation equals unpadded) are in test_model_training.py and test_model_decode.py."""
import pytest
import torch

from sambay_model import Phi4FlashCache, Phi4FlashConfig
from sambay_model.forward_context import build_forward_context


def plan(batch, length, past=0, attention_mask=None, position_ids=None, doc_ids=None, cache=None):
    return build_forward_context(batch=batch, length=length, past=past, device=torch.device("cpu"),
                                 attention_mask=attention_mask, position_ids=position_ids, doc_ids=doc_ids,
                                 keep_last=0, cache=cache, backend="torch")


def tiny_cache() -> Phi4FlashCache:
    return Phi4FlashCache(Phi4FlashConfig(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=4,
                                          num_attention_heads=2, num_key_value_heads=2, sliding_window=4))


def test_one_document_without_padding_carries_no_segment_tensors():
    ctx = plan(2, 5, attention_mask=torch.ones(2, 5, dtype=torch.long), position_ids=torch.arange(5)[None])
    assert ctx.doc_ids is None and ctx.resets is None and ctx.real is None and ctx.last_visible is None
    assert ctx.positions.tolist() == [0, 1, 2, 3, 4] and ctx.backend == "torch" and ctx.keep_last == 0


def test_restarting_position_ids_plan_the_same_documents_as_doc_ids():
    by_ids = plan(1, 5, doc_ids=torch.tensor([[5, 5, 5, 7, 7]]))
    by_positions = plan(1, 5, position_ids=torch.tensor([[0, 1, 2, 0, 1]]))
    for ctx in (by_ids, by_positions):
        assert ctx.resets.tolist() == [[False, False, False, True, False]]
        assert ctx.doc_ids.tolist() == [[0, 0, 0, 1, 1]]
        assert ctx.last_visible.tolist() == [[False, False, False, True, True]]
        assert ctx.real is None


def test_left_padding_is_a_segment_of_its_own():
    ctx = plan(2, 4, attention_mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    assert ctx.real.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert ctx.resets.tolist() == [[False, False, True, False], [False] * 4]
    assert ctx.doc_ids.tolist() == [[0, 0, 1, 1], [0, 0, 0, 0]]
    assert ctx.last_visible.tolist() == [[False, False, True, True], [True] * 4]


def test_a_decode_step_continues_the_cached_plan():
    cache = tiny_cache()
    plan(2, 4, attention_mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), cache=cache)
    cache.advance(4)
    ctx = plan(2, 1, past=4, attention_mask=torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]), cache=cache)
    assert ctx.real is None and ctx.resets.tolist() == [[False], [False]]
    assert ctx.doc_ids.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]]
    assert ctx.positions.tolist() == [4]
    assert cache.segments().tolist() == ctx.doc_ids.tolist()


def test_padding_after_an_unplanned_prefill_starts_new_segments():
    cache = tiny_cache()
    assert plan(1, 3, cache=cache).doc_ids is None  # nothing to plan: the cache records nothing
    cache.advance(3)
    ctx = plan(1, 2, past=3, attention_mask=torch.tensor([[1, 1, 1, 0, 1]]), cache=cache)
    assert ctx.resets.tolist() == [[True, True]]
    assert ctx.doc_ids.tolist() == [[0, 0, 0, 1, 2]]
    assert ctx.last_visible.tolist() == [[False, False, False, False, True]]


def test_bad_inputs_name_the_argument():
    cache = tiny_cache()
    cache.advance(2)
    with pytest.raises(ValueError, match="doc_ids"):
        plan(1, 2, past=2, doc_ids=torch.zeros(1, 2, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="doc_ids must have shape"):
        plan(1, 3, doc_ids=torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        plan(1, 3, past=0, attention_mask=torch.ones(1, 4))
