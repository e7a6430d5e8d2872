"""last_query_attention (the decode step's attention) against the explicit-softmax reference and the SDPA op."""
import pytest
import torch

from sambay_model.decode_attention import last_query_attention
from sambay_model.ops.attention import attention_torch
from tests.sambay_model.reference_ops import attention_ref


@pytest.mark.parametrize("hq, hkv", [(4, 4), (8, 2), (6, 3)])
def test_matches_reference_with_gqa_masks_and_strided_cache_views(hq, hkv):
    g = torch.Generator().manual_seed(hq * 10 + hkv)
    b, n, d, dv = 3, 37, 16, 24
    q = torch.randn(b, hq, 1, d, generator=g, dtype=torch.float64)
    # K,V as a cache buffer's used part: a strided view of a larger allocation.
    k = torch.randn(b, hkv, n + 11, d, generator=g, dtype=torch.float64)[:, :, 5:5 + n]
    v = torch.randn(b, hkv, n + 11, dv, generator=g, dtype=torch.float64)[:, :, 5:5 + n]
    visible = torch.rand(b, n, generator=g) > 0.3
    visible[:, -1] = True
    visible[2] = False  # a row that sees nothing returns zeros
    (out,) = last_query_attention(q, k, (v,), 0.3, visible)
    ref = attention_ref(q, k, v, causal=False, key_padding_mask=visible, scale=0.3)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    (plain,) = last_query_attention(q, k, (v,), 0.3)
    torch.testing.assert_close(plain, attention_torch(q, k, v, causal=True, scale=0.3), rtol=1e-10, atol=1e-12)


def test_several_values_share_one_softmax():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 1, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g)
    v1, v2 = torch.randn(1, 2, 9, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g)
    a, b = last_query_attention(q, k, (v1, v2), 0.5)
    both = attention_torch(q, k, torch.cat([v1, v2], -1), scale=0.5)
    torch.testing.assert_close(torch.cat([a, b], -1), both)


def test_rejects_more_than_one_query():
    with pytest.raises(ValueError, match="one query"):
        last_query_attention(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), (torch.randn(1, 2, 5, 4),), 1.0)
