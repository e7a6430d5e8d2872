"""attention (pure-PyTorch path) against an explicit-softmax reference with per-pair visibility.

Padding reaches attention as documents of its own (the model gives padded runs their own segment ids), so the
padded cases here are document ids with a leading padding segment."""
import importlib

import pytest
import torch

from sambay_model.ops import attention
from tests.sambay_model.reference_ops import attention_ref

attn_impl = importlib.import_module("sambay_model.ops.attention")


def make(Bsz=2, Hq=4, Hkv=2, Tq=12, Tk=12, d=8, dv=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(Bsz, Hq, Tq, d, generator=g, dtype=dtype)
    k = torch.randn(Bsz, Hkv, Tk, d, generator=g, dtype=dtype)
    v = torch.randn(Bsz, Hkv, Tk, dv or d, generator=g, dtype=dtype)
    return q, k, v


def docs(Bsz, T, seed, p=0.2):
    g = torch.Generator().manual_seed(seed)
    return torch.cumsum((torch.rand(Bsz, T, generator=g) < p).long(), dim=1)


def segments(Bsz, T, doc_ids=None, pads=None):
    """Document ids with the first ``pads[b]`` tokens of row b in a padding segment of their own (id -1)."""
    ids = torch.zeros(Bsz, T, dtype=torch.long) if doc_ids is None else doc_ids.clone()
    for b, n in enumerate(pads or ()):
        ids[b, :n] = -1
    return ids


CASES = [
    # (Hq, Hkv, Tq, Tk, dv, window, use_docs, pads, causal)
    (4, 4, 12, 12, None, None, False, None, True),  # fused is_causal fast path
    (4, 2, 12, 12, None, None, False, None, False),  # non-causal, GQA
    (4, 1, 5, 12, None, None, False, None, True),  # Tq < Tk (cached decode / chunked prefill)
    (4, 2, 1, 12, None, None, False, None, True),  # one decode query
    (4, 2, 12, 12, 16, None, False, None, True),  # V of width 2d (differential attention)
    (4, 2, 12, 12, None, 3, False, None, True),  # sliding window
    (4, 2, 12, 12, None, 12, False, None, True),  # window covering everything
    (4, 2, 12, 12, None, None, True, None, True),  # packed documents
    (4, 2, 12, 12, 16, 4, True, (3, 0), True),  # everything at once
    (4, 2, 6, 12, None, 4, True, (3, 7), True),  # Tq < Tk with docs, window and padding
    (2, 2, 12, 12, None, None, False, (5, 12), True),  # a fully padded row
    (4, 2, 12, 12, None, None, True, (2, 0), False),  # non-causal with docs and padding
]


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case):
    Hq, Hkv, Tq, Tk, dv, window, use_docs, pads, causal = case
    q, k, v = make(Hq=Hq, Hkv=Hkv, Tq=Tq, Tk=Tk, dv=dv, seed=len(str(case)))
    doc_ids = docs(2, Tk, seed=Tk) if use_docs else None
    if pads:
        doc_ids = segments(2, Tk, doc_ids, pads)
    kwargs = dict(causal=causal, window=window, doc_ids=doc_ids)
    out = attention(q, k, v, backend="torch", **kwargs)
    ref = attention_ref(q, k, v, **kwargs)
    assert out.shape == (2, Hq, Tq, dv or 8)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_fp32_matches_float64_reference():
    q, k, v = make(Tq=16, Tk=16, dv=16, seed=2)
    doc_ids = docs(2, 16, seed=3)
    out = attention(q.float(), k.float(), v.float(), window=5, doc_ids=doc_ids, backend="torch")
    ref = attention_ref(q, k, v, window=5, doc_ids=doc_ids)
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_custom_scale():
    q, k, v = make(seed=4)
    out = attention(q, k, v, scale=0.3, window=4, backend="torch")
    torch.testing.assert_close(out, attention_ref(q, k, v, scale=0.3, window=4), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("Tq", [64, 23, 1])
@pytest.mark.parametrize("block", [8, 5, 16])
def test_blockwise_window_equals_masked_path(Tq, block, monkeypatch):
    Tk, window = 64, 8
    q, k, v = make(Tq=Tq, Tk=Tk, dv=16, seed=Tq + block)
    doc_ids = segments(2, Tk, docs(2, Tk, seed=5, p=0.05), (10, 0))
    kwargs = dict(window=window, doc_ids=doc_ids)
    monkeypatch.setattr(attn_impl, "BLOCKWISE_MIN_WINDOWS", 10**9)  # always one masked SDPA call
    masked = attn_impl.attention_torch(q, k, v, **kwargs)
    monkeypatch.setattr(attn_impl, "BLOCKWISE_MIN_WINDOWS", 1)
    blockwise = attn_impl.attention_torch(q, k, v, block=block, **kwargs)
    torch.testing.assert_close(blockwise, masked, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(masked, attention_ref(q, k, v, **kwargs), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Tq", [48, 17])
def test_long_masked_attention_in_query_blocks(causal, Tq, monkeypatch):
    Tk = 48
    q, k, v = make(Tq=Tq, Tk=Tk, dv=16, seed=Tq + causal)
    kwargs = dict(causal=causal, doc_ids=segments(2, Tk, docs(2, Tk, seed=6, p=0.1), (7, 0)))
    calls = []
    original = attn_impl._attention_blockwise
    monkeypatch.setattr(
        attn_impl, "_attention_blockwise", lambda *a, **kw: calls.append(kw["block"]) or original(*a, **kw)
    )
    monkeypatch.setattr(attn_impl, "MAX_MASK_ELEMENTS", 2 * 10 * Tk)  # batch of 2 rows x 10 queries
    out = attn_impl.attention_torch(q, k, v, **kwargs)
    assert calls == [10]
    torch.testing.assert_close(out, attention_ref(q, k, v, **kwargs), rtol=1e-10, atol=1e-12)


def test_blockwise_gradients_equal_masked_path(monkeypatch):
    q, k, v = make(Tq=40, Tk=40, seed=6)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    monkeypatch.setattr(attn_impl, "BLOCKWISE_MIN_WINDOWS", 1)
    g1 = torch.autograd.grad(attention(*leaves, window=6, backend="torch").sum(), leaves)
    monkeypatch.setattr(attn_impl, "BLOCKWISE_MIN_WINDOWS", 10**9)
    g2 = torch.autograd.grad(attention(*leaves, window=6, backend="torch").sum(), leaves)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_long_sliding_window_takes_blockwise_path(monkeypatch):
    calls = []
    original = attn_impl._attention_blockwise
    monkeypatch.setattr(attn_impl, "_attention_blockwise", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    q, k, v = make(Hq=2, Hkv=1, Tq=256, Tk=256, d=4, seed=7, dtype=torch.float32)
    attention(q, k, v, window=16, backend="torch")
    assert calls


def test_bad_arguments():
    q, k, v = make(seed=8)
    with pytest.raises(ValueError, match="causal"):
        attention(q, k, v, causal=False, window=4, backend="torch")
    with pytest.raises(ValueError, match="multiple"):
        attention(q[:, :3], k, v, backend="torch")
    with pytest.raises(ValueError, match="doc_ids"):
        attention(q, k, v, doc_ids=torch.zeros(2, 5, dtype=torch.long), backend="torch")
    with pytest.raises(ValueError, match="more queries"):
        attention(q, k[:, :, :4], v[:, :, :4], backend="torch")
