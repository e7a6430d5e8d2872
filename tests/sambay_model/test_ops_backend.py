"""Backend resolution, the CUDA adapters and the routing of compute_backend="cuda", exercised on CPU with
stand-in kernels.

The stand-ins implement the documented semantics of the real kernels (flash-attn's [B, T, H, d] layout,
bottom-right causal alignment, window_size=(left, right), GQA head mapping, equal q/v head dims; causal-conv1d's
seq_idx / initial_states / in-place state update; mamba-ssm's in-place state update), so these tests check
every index, layout and fallback decision the GPU path makes. The model-level tests at the end check that
packed and padded batches under "cuda" reach the Triton adapters (or, without Triton, the PyTorch ops) and never
mamba-ssm's scan, which has no document reset.
"""
import dataclasses
import importlib
import math
from types import SimpleNamespace

import pytest
import torch

from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
from sambay_model.ops import attention, resolve_backend
from sambay_model.ops.attention import attention_torch
from sambay_model.ops.backend import KernelProbe
from sambay_model.ops.conv import causal_conv1d_torch
from tests.sambay_model.reference_ops import attention_ref, causal_conv1d_ref, selective_scan_ref

scan_mod = importlib.import_module("sambay_model.ops.selective_scan")
selective_state_update_torch = scan_mod.selective_state_update_torch

backend_mod = importlib.import_module("sambay_model.ops.backend")
cuda_mod = importlib.import_module("sambay_model.ops.cuda_kernels")
dispatch_mod = importlib.import_module("sambay_model.ops.dispatch")


# ------------------------------------------------------------------------------------- stand-in kernels


def _segment_attention(q, k, v, scale, causal, window_size):
    """q [Tq, H, d], k/v [Tk, Hkv, d] -> [Tq, H, d] in float64, flash-attn masking rules."""
    Tq, H, d = q.shape
    Tk, Hkv, _ = k.shape
    assert v.shape[-1] == d, "flash-attn needs equal q and v head dims"
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q, k, v = q.double(), k.double(), v.double()
    k = k.repeat_interleave(H // Hkv, dim=1)
    v = v.repeat_interleave(H // Hkv, dim=1)
    i = torch.arange(Tq)[:, None] + (Tk - Tq)  # bottom-right alignment
    j = torch.arange(Tk)[None, :]
    left, right = window_size
    if causal:
        right = 0
    visible = torch.ones(Tq, Tk, dtype=torch.bool)
    if left >= 0:
        visible &= j >= i - left
    if right >= 0:
        visible &= j <= i + right
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", probs, v)


def fake_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1)):
    assert q.dtype in (torch.float16, torch.bfloat16) and q.is_contiguous()
    return torch.stack(
        [_segment_attention(q[b], k[b], v[b], softmax_scale, causal, window_size) for b in range(q.shape[0])]
    )


def fake_flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                softmax_scale=None, causal=False, window_size=(-1, -1)):
    assert cu_seqlens_q.dtype == torch.int32 and cu_seqlens_k.dtype == torch.int32
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    assert max_seqlen_q == max(b - a for a, b in zip(cq, cq[1:]))
    assert max_seqlen_k == max(b - a for a, b in zip(ck, ck[1:]))
    parts = [
        _segment_attention(
            q[cq[s] : cq[s + 1]], k[ck[s] : ck[s + 1]], v[ck[s] : ck[s + 1]], softmax_scale, causal, window_size
        )
        for s in range(len(cq) - 1)
    ]
    return torch.cat(parts)


def fake_causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                          final_states_out=None, activation=None):
    assert weight.dim() == 2
    assert seq_idx is None or initial_states is None, "causal_conv1d_fn takes one of seq_idx / initial_states"
    resets = None
    if seq_idx is not None:
        assert seq_idx.dtype == torch.int32 and x.stride(1) == 1, "seq_idx needs int32 and channel-last x"
        resets = torch.zeros(seq_idx.shape, dtype=torch.bool)
        resets[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    if initial_states is not None:
        assert x.stride(1) == 1 and initial_states.stride(1) == 1, "initial_states need channel-last layout"
    return causal_conv1d_ref(x, weight, bias, resets, initial_states, activation)


def fake_causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    conv_state.copy_(torch.cat([conv_state[..., 1:], x.unsqueeze(-1)], dim=-1))
    y = (conv_state * weight).sum(-1) + (0 if bias is None else bias)
    return torch.nn.functional.silu(y) if activation else y


def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False):
    assert z is None and A.dtype == torch.float32
    out = selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus, return_last_state=return_last_state,
                             dtype=torch.float32)
    return out


def fake_selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    dt = dt + (0 if dt_bias is None else dt_bias)
    dt = torch.nn.functional.softplus(dt) if dt_softplus else dt
    state.mul_(torch.exp(dt[..., None] * A)).add_((dt * x)[..., None] * B[:, None, :])
    y = (state * C[:, None, :]).sum(-1)
    return y + (0 if D is None else D * x)


FAKES = KernelProbe(
    selective_scan_fn=fake_selective_scan_fn,
    selective_state_update=fake_selective_state_update,
    causal_conv1d_fn=fake_causal_conv1d_fn,
    causal_conv1d_update=fake_causal_conv1d_update,
    flash_attn_func=fake_flash_attn_func,
    flash_attn_varlen_func=fake_flash_attn_varlen_func,
)


@pytest.fixture
def fake_kernels(monkeypatch):
    monkeypatch.setattr(cuda_mod, "probe_kernels", lambda: FAKES)
    monkeypatch.setattr(backend_mod, "probe_kernels", lambda: FAKES)
    return FAKES


@pytest.fixture
def spy(monkeypatch):
    """``spy(module, name)`` wraps ``module.name`` so that calls pass through and are appended to a returned list."""
    def install(module, name):
        original, calls = getattr(module, name), []
        monkeypatch.setattr(module, name, lambda *a, **k: calls.append(name) or original(*a, **k))
        return calls
    return install


def counted(monkeypatch, probe: KernelProbe) -> dict[str, list]:
    """Install ``probe`` with every kernel counting its calls; returns kernel name -> list of calls."""
    calls = {f.name: [] for f in dataclasses.fields(KernelProbe) if f.name != "errors"}

    def wrap(name, fn):
        return lambda *a, **k: calls[name].append(1) or fn(*a, **k)

    wrapped = dataclasses.replace(probe, **{n: wrap(n, getattr(probe, n)) for n in calls})
    monkeypatch.setattr(cuda_mod, "probe_kernels", lambda: wrapped)
    monkeypatch.setattr(backend_mod, "probe_kernels", lambda: wrapped)
    return calls


@pytest.fixture
def on_cuda(monkeypatch):
    """Let the ops run a requested "cuda" backend on CPU tensors (the stand-ins stand for the GPU kernels)."""
    monkeypatch.setattr(dispatch_mod, "resolve_backend", lambda requested, device: requested)


@pytest.fixture
def triton_standins(monkeypatch):
    """Triton importable, its adapters replaced by the PyTorch ops (same contracts); returns the adapters called."""
    calls = []

    def standin(name, fn):
        return lambda *a, **k: calls.append(name) or fn(*a, **k)

    modules = {
        "scan": SimpleNamespace(selective_scan_triton=standin("selective_scan_triton", scan_mod.selective_scan_torch),
                                selective_state_update_triton=standin("selective_state_update_triton",
                                                                      selective_state_update_torch)),
        "conv": SimpleNamespace(causal_conv1d_triton=standin("causal_conv1d_triton", causal_conv1d_torch)),
        # FlexAttention's own argument (the forward's mask cache) has no PyTorch counterpart: not passed on.
        "attention": SimpleNamespace(attention_flex=standin("attention_flex",
                                                            lambda *a, masks=None, **k: attention_torch(*a, **k))),
    }
    monkeypatch.setattr(backend_mod, "triton_importable", lambda: True)
    monkeypatch.setattr(dispatch_mod, "_triton", modules.__getitem__)
    return calls


# ------------------------------------------------------------------------------------ backend resolution


@pytest.fixture
def no_triton(monkeypatch):
    monkeypatch.setattr(backend_mod, "triton_importable", lambda: False)


def test_resolve_backend_without_kernels(monkeypatch, no_triton):
    monkeypatch.setattr(backend_mod, "probe_kernels", lambda: KernelProbe(errors=("flash_attn.x: boom",)))
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    with pytest.raises(RuntimeError, match="flash_attn.x: boom"):
        resolve_backend("cuda", "cuda")
    with pytest.raises(RuntimeError, match="needs the triton package"):
        resolve_backend("triton", "cuda")
    with pytest.raises(ValueError, match="compute_backend"):
        resolve_backend("flash", "cpu")


def test_resolve_backend_prefers_triton_on_cuda(fake_kernels, monkeypatch):
    monkeypatch.setattr(backend_mod, "triton_importable", lambda: True)
    monkeypatch.setattr(backend_mod, "triton_interpreted", lambda: False)
    assert resolve_backend("auto", "cuda:0") == "triton"
    assert resolve_backend("auto", "cpu") == "torch"  # never the interpreter by default
    assert resolve_backend("cuda", "cuda") == "cuda"  # mamba-ssm / flash-attn stay selectable
    assert resolve_backend("triton", "cuda") == "triton"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        resolve_backend("triton", "cpu")
    monkeypatch.setattr(backend_mod, "triton_interpreted", lambda: True)
    assert resolve_backend("triton", "cpu") == "triton"


def test_resolve_backend_with_kernels(fake_kernels, no_triton):
    assert resolve_backend("auto", "cuda:0") == "cuda"
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", "cuda") == "torch"
    assert resolve_backend("cuda", "cuda") == "cuda"
    with pytest.raises(RuntimeError, match="CUDA device"):
        resolve_backend("cuda", "cpu")


def test_probe_catches_any_import_failure(monkeypatch):
    def explode(module, attr):
        if module == "flash_attn":
            raise OSError("undefined symbol: _ZN3c10")  # a typical ABI failure, not an ImportError
        raise ImportError(f"No module named {module}")

    monkeypatch.setattr(backend_mod, "_import_attr", explode)
    backend_mod.probe_kernels.cache_clear()
    try:
        probe = backend_mod.probe_kernels()
        assert not probe.complete
        assert probe.flash_attn_func is None
        assert any("undefined symbol" in e for e in probe.errors)
        assert backend_mod.probe_kernels() is probe  # cached
    finally:
        backend_mod.probe_kernels.cache_clear()


def test_probe_on_this_machine_does_not_raise():
    probe = backend_mod.probe_kernels()
    assert isinstance(probe.complete, bool)


# ---------------------------------------------------------------------------------------- index helpers


def test_small_helpers():
    resets = torch.tensor([[True, False, True, False], [False, True, True, False]])
    assert cuda_mod.resets_to_seq_idx(resets).tolist() == [[1, 1, 2, 2], [0, 1, 2, 2]]
    assert cuda_mod.resets_to_seq_idx(resets).dtype == torch.int32
    assert cuda_mod.flash_window(None) == (-1, -1)
    assert cuda_mod.flash_window(512) == (511, 0)
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(cuda_mod.to_flash_layout(x)[:, 4, 1], x[:, 1, 4])
    v = torch.randn(2, 3, 5, 8)
    parts = cuda_mod.split_value_heads(v, 4)
    assert len(parts) == 2 and torch.equal(torch.cat(parts, -1), v)
    with pytest.raises(ValueError):
        cuda_mod.split_value_heads(v, 3)


def test_plan_varlen():
    # Row 1 starts with a padding segment (id -1), as the model lays padding out.
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, 2], [-1, 5, 5, 5, 6, 6]])
    plan = cuda_mod.plan_varlen(doc_ids, Tq=3)
    # Query positions 3..5: row 0 -> docs 1 (pos 3,4) and 2 (pos 5); row 1 -> doc 5 (pos 3) and doc 6 (pos 4,5).
    assert plan.cu_seqlens_q.tolist() == [0, 2, 3, 4, 6]
    # Keys: row 0 doc 0 and row 1's padding have no query (dropped).
    assert plan.k_index.tolist() == [2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert plan.cu_seqlens_k.tolist() == [0, 3, 4, 7, 9]
    assert (plan.max_seqlen_q, plan.max_seqlen_k) == (2, 3)


# ------------------------------------------------------------------------- adapters with stand-in kernels


def _qkv(Hq, Hkv, Tq, Tk, d, dv, seed):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16)  # noqa: E731
    return mk(2, Hq, Tq, d), mk(2, Hkv, Tk, d), mk(2, Hkv, Tk, dv)


ATTN_CASES = [
    # (Hq, Hkv, Tq, Tk, dv, window, use_docs, pads, causal)
    (4, 2, 10, 10, 8, None, False, None, True),
    (4, 2, 4, 10, 16, 3, False, None, True),
    (4, 2, 10, 10, 16, 4, True, (3, 0), True),
    (4, 1, 5, 10, 8, None, True, (2, 6), True),
    (2, 2, 10, 10, 8, None, False, (10, 1), True),
    (4, 2, 10, 10, 8, None, True, (2, 0), False),
    (4, 2, 1, 10, 16, 4, False, (4, 0), True),
]


@pytest.mark.parametrize("case", ATTN_CASES)
def test_flash_adapter_matches_reference(case, fake_kernels):
    Hq, Hkv, Tq, Tk, dv, window, use_docs, pads, causal = case
    q, k, v = _qkv(Hq, Hkv, Tq, Tk, 8, dv, seed=len(str(case)))
    starts = torch.rand(2, Tk, generator=torch.Generator().manual_seed(1)) < 0.25
    doc_ids = torch.cumsum(starts.long(), 1) if use_docs else None
    if pads:  # left padding: a segment of its own (id -1) before the row's documents
        doc_ids = torch.zeros(2, Tk, dtype=torch.long) if doc_ids is None else doc_ids
        for b, n in enumerate(pads):
            doc_ids[b, :n] = -1
    kwargs = dict(causal=causal, window=window, doc_ids=doc_ids, scale=None)
    out = cuda_mod.attention_flash(q, k, v, **kwargs)
    ref = attention_ref(q.double(), k.double(), v.double(), **kwargs)
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=1e-10, atol=1e-12)


def test_flash_adapter_takes_right_padding_as_a_segment(fake_kernels):
    q, k, v = _qkv(2, 2, 6, 6, 8, 8, seed=3)
    doc_ids = torch.tensor([[0] * 4 + [1] * 2, [0] * 6])
    out = cuda_mod.attention_flash(q, k, v, causal=True, window=None, doc_ids=doc_ids, scale=None)
    ref = attention_ref(q.double(), k.double(), v.double(), doc_ids=doc_ids)
    torch.testing.assert_close(out.double(), ref, rtol=1e-10, atol=1e-12)


def test_adapters_refuse_calls_their_kernel_cannot_compute(fake_kernels):
    inp = _scan_inputs(1)
    resets = torch.zeros(2, 12, dtype=torch.bool)
    resets[0, 4] = True
    with pytest.raises(ValueError, match="resets"):
        cuda_mod.selective_scan_cuda(**inp, delta_softplus=True, resets=resets, initial_state=None,
                                     return_last_state=False)
    x, w = torch.randn(2, 4, 12), torch.randn(4, 1, 4)
    with pytest.raises(ValueError, match="not both"):
        cuda_mod.causal_conv1d_cuda(x, w, None, resets, torch.zeros(2, 4, 3), "silu")
    q, k, v = _qkv(2, 2, 5, 5, 8, 8, seed=2)
    with pytest.raises(ValueError, match="flash-attn cannot"):
        cuda_mod.attention_flash(q.float(), k.float(), v.float(), causal=True, window=None, doc_ids=None, scale=None)


def test_attention_dispatch_by_dtype(fake_kernels, on_cuda, triton_standins, spy):
    q, k, v = _qkv(2, 2, 5, 5, 8, 8, seed=4)
    flash = spy(cuda_mod, "attention_flash")
    attention(q, k, v, backend="cuda")
    assert len(flash) == 1  # bf16 goes to flash-attn
    out = attention(q.float(), k.float(), v.float(), window=3, backend="cuda")
    assert len(flash) == 1 and triton_standins == ["attention_flex"]  # fp32 goes to FlexAttention
    torch.testing.assert_close(out, attention_ref(q.float(), k.float(), v.float(), window=3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["plain", "resets", "initial"])
def test_conv_adapter(mode, fake_kernels):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 15, generator=g, dtype=torch.float64)
    w = torch.randn(6, 1, 4, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    resets = torch.rand(2, 15, generator=g) < 0.2 if mode == "resets" else None
    init = torch.randn(2, 6, 3, generator=g, dtype=torch.float64) if mode == "initial" else None
    out = cuda_mod.causal_conv1d_cuda(x, w, b, resets, init, "silu")
    torch.testing.assert_close(out, causal_conv1d_torch(x, w, b, resets, init, "silu"), rtol=1e-12, atol=1e-12)


def test_conv_update_adapter_leaves_state_untouched(fake_kernels):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 6, generator=g)
    state = torch.randn(2, 6, 4, generator=g)
    w = torch.randn(6, 1, 4, generator=g)
    before = state.clone()
    y, new_state = cuda_mod.causal_conv1d_update_cuda(x, state, w, None, "silu")
    assert torch.equal(state, before)
    assert torch.equal(new_state[..., -1], x) and torch.equal(new_state[..., :3], before[..., 1:])


def _scan_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(2, 4, 12), delta=r(2, 4, 12), A=-torch.exp(r(4, 3)), B=r(2, 3, 12), C=r(2, 3, 12), D=r(4),
                delta_bias=r(4))


def test_scan_adapter_uses_kernel_when_exact(fake_kernels):
    inp = _scan_inputs(7)
    resets = torch.zeros(2, 12, dtype=torch.bool)
    resets[:, 0] = True  # a reset at t=0 without initial state changes nothing: kernel still usable
    y, last = cuda_mod.selective_scan_cuda(**inp, delta_softplus=True, resets=resets, initial_state=None,
                                           return_last_state=True)
    y_ref, last_ref = selective_scan_ref(**inp, return_last_state=True)
    assert last.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last.double(), last_ref, rtol=1e-5, atol=1e-5)


def test_state_update_adapter_leaves_state_untouched(fake_kernels):
    inp = _scan_inputs(9)
    state = torch.randn(2, 4, 3)
    before = state.clone()
    y, new_state = cuda_mod.selective_state_update_cuda(
        state, inp["u"][..., 0], inp["delta"][..., 0], inp["A"], inp["B"][..., 0], inp["C"][..., 0], inp["D"],
        inp["delta_bias"], True,
    )
    assert torch.equal(state, before)
    y_ref, s_ref = selective_state_update_torch(
        state, inp["u"][..., 0], inp["delta"][..., 0], inp["A"], inp["B"][..., 0], inp["C"][..., 0], inp["D"],
        inp["delta_bias"], True,
    )
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new_state, s_ref, rtol=1e-6, atol=1e-6)


def test_conv_with_resets_and_initial_state_goes_to_triton(monkeypatch, on_cuda, triton_standins):
    fn = counted(monkeypatch, FAKES)["causal_conv1d_fn"]
    x, w = torch.randn(2, 4, 12), torch.randn(4, 1, 4)
    resets = torch.zeros(2, 12, dtype=torch.bool)
    resets[1, 6] = True
    dispatch_mod.causal_conv1d(x, w, None, resets, torch.randn(2, 4, 3), backend="cuda")
    assert triton_standins == ["causal_conv1d_triton"] and not fn
    dispatch_mod.causal_conv1d(x, w, None, resets, None, backend="cuda")
    assert len(fn) == 1  # resets alone: causal-conv1d's seq_idx


# --------------------------------------------------------------- compute_backend="cuda" on whole batches

FLASH_IN_INPUT_DTYPE = dataclasses.replace(  # the model feeds the output on, so it must keep q's dtype
    FAKES,
    flash_attn_func=lambda q, *a, **k: fake_flash_attn_func(q, *a, **k).to(q.dtype),
    flash_attn_varlen_func=lambda q, *a, **k: fake_flash_attn_varlen_func(q, *a, **k).to(q.dtype),
)


def _batch(kind: str) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (2, 12), generator=g)
    if kind == "doc_ids":
        return dict(input_ids=ids, doc_ids=torch.tensor([[0] * 5 + [1] * 7, [0] * 9 + [1] * 3]))
    if kind == "position_ids":  # TRL padding-free packing: positions restart at each document
        return dict(input_ids=ids, position_ids=torch.tensor([list(range(5)) + list(range(7)), list(range(12))]))
    mask = torch.ones(2, 12, dtype=torch.long)
    if kind == "left_padding":
        mask[0, :4] = 0
    elif kind == "right_padding":
        mask[1, 8:] = 0
    return dict(input_ids=ids, attention_mask=mask)


@pytest.fixture
def kernel_calls(monkeypatch):
    return counted(monkeypatch, FLASH_IN_INPUT_DTYPE)


@pytest.fixture
def cuda_model(on_cuda, kernel_calls):
    torch.manual_seed(0)
    cfg = Phi4FlashConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=8,
                          num_attention_heads=4, num_key_value_heads=2, sliding_window=4, bos_token_id=0,
                          eos_token_id=1, pad_token_id=2, compute_backend="cuda")
    return Phi4FlashForCausalLM(cfg).to(torch.bfloat16).eval()  # flash-attn takes bf16


MAMBA_LAYERS = 3  # layers 0, 2 and the memory layer 4 of 8


@pytest.mark.parametrize("kind", ["doc_ids", "position_ids", "left_padding", "right_padding"])
def test_packed_and_padded_batches_under_cuda_run_the_triton_scan(kind, cuda_model, kernel_calls, triton_standins,
                                                                  spy):
    torch_scan = spy(dispatch_mod, "selective_scan_torch")
    mamba_scan, varlen = kernel_calls["selective_scan_fn"], kernel_calls["flash_attn_varlen_func"]
    with torch.no_grad():
        logits = cuda_model(**_batch(kind)).logits
    assert not mamba_scan and not torch_scan
    assert triton_standins.count("selective_scan_triton") == MAMBA_LAYERS
    assert varlen  # documents and padding segments through flash-attn's varlen kernel
    cuda_model.config.compute_backend = "torch"
    with torch.no_grad():
        torch.testing.assert_close(logits, cuda_model(**_batch(kind)).logits, rtol=0.05, atol=0.05)


def test_packed_batches_under_cuda_without_triton_run_the_pytorch_scan(cuda_model, kernel_calls, no_triton, spy):
    mamba_scan, torch_scan = kernel_calls["selective_scan_fn"], spy(dispatch_mod, "selective_scan_torch")
    with torch.no_grad(), pytest.warns(UserWarning, match="triton does not import"):
        cuda_model(**_batch("doc_ids"))
    # On a GPU this PyTorch scan runs time-chunked (linear_scan.num_chunks(..., on_gpu=True) = sqrt(T) chunks).
    assert not mamba_scan and len(torch_scan) == MAMBA_LAYERS


def test_reset_free_batches_under_cuda_keep_mamba_ssm(cuda_model, kernel_calls, triton_standins):
    mamba_scan, flash = kernel_calls["selective_scan_fn"], kernel_calls["flash_attn_func"]
    with torch.no_grad():
        cuda_model(**_batch("plain"))
    assert len(mamba_scan) == MAMBA_LAYERS and flash and not triton_standins
