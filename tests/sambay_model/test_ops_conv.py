"""causal_conv1d / causal_conv1d_update / conv_state_after against per-document F.conv1d."""
import pytest
import torch

from sambay_model.ops import causal_conv1d, causal_conv1d_update, conv_state_after
from sambay_model.ops.conv import positions_in_document
from tests.sambay_model.reference_ops import causal_conv1d_ref


def make(Bsz=3, Dch=5, T=23, K=4, seed=0, resets_p=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(Bsz, Dch, T, generator=g, dtype=torch.float64)
    w = torch.randn(Dch, 1, K, generator=g, dtype=torch.float64)
    b = torch.randn(Dch, generator=g, dtype=torch.float64)
    resets = torch.rand(Bsz, T, generator=g) < resets_p
    init = torch.randn(Bsz, Dch, K - 1, generator=g, dtype=torch.float64)
    return x, w, b, resets, init


@pytest.mark.parametrize("use_resets", [False, True])
@pytest.mark.parametrize("use_init", [False, True])
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("K", [2, 4])
def test_matches_per_document_conv(use_resets, use_init, activation, K):
    x, w, b, resets, init = make(K=K, seed=K)
    resets[0, 0] = True  # a row whose first token starts a document ignores initial_state
    resets = resets if use_resets else None
    init = init if use_init else None
    y = causal_conv1d(x, w, b, resets, init, activation, backend="torch")
    y_ref = causal_conv1d_ref(x, w, b, resets, init, activation)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)


def test_two_dim_weight_and_no_bias():
    x, w, _, resets, _ = make(seed=1)
    y = causal_conv1d(x, w[:, 0], None, resets, backend="torch")
    torch.testing.assert_close(y, causal_conv1d_ref(x, w, None, resets), rtol=1e-12, atol=1e-12)


def test_fp32_matches_float64_reference():
    x, w, b, resets, init = make(seed=2)
    y = causal_conv1d(x.float(), w.float(), b.float(), resets, init.float(), backend="torch")
    y_ref = causal_conv1d_ref(x, w, b, resets, init)
    assert ((y.double() - y_ref).abs().max() / y_ref.abs().max()).item() < 1e-6


def test_gradcheck_with_resets_and_initial_state():
    x, w, b, resets, init = make(Bsz=2, Dch=3, T=9, seed=3, resets_p=0.3)
    args = [t.clone().requires_grad_() for t in (x, w, b, init)]
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_, i_: causal_conv1d(x_, w_, b_, resets, i_, backend="torch"), args
    )


def test_document_start_sees_only_itself():
    x, w, b, _, init = make(Bsz=1, Dch=2, T=8, seed=4)
    resets = torch.zeros(1, 8, dtype=torch.bool)
    resets[0, 5] = True
    y = causal_conv1d(x, w, b, resets, init, activation=None, backend="torch")
    expected = x[..., 5] * w[:, 0, -1] + b
    torch.testing.assert_close(y[..., 5], expected, rtol=1e-12, atol=1e-12)


def test_positions_in_document():
    resets = torch.tensor([[False, False, True, False], [True, False, False, True]])
    pos = positions_in_document(resets)
    assert pos[0, 2:].tolist() == [0, 1]
    assert pos[1].tolist() == [0, 1, 2, 0]
    assert (pos[0, :2] > 1000).all()  # continues a document from before the sequence


def test_update_steps_equal_full_conv():
    x, w, b, _, init = make(seed=5)
    K = w.shape[-1]
    y_full = causal_conv1d(x, w, b, initial_state=init, backend="torch")
    state = torch.cat([torch.zeros_like(init[..., :1]), init], -1)  # last K raw inputs before x
    before = state.clone()
    y_t, new_state = causal_conv1d_update(x[..., 0], state, w, b, backend="torch")
    assert torch.equal(state, before)  # functional: the input state is untouched
    ys = [y_t]
    state = new_state
    for t in range(1, x.shape[-1]):
        y_t, state = causal_conv1d_update(x[..., t], state, w, b, backend="torch")
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, -1), y_full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, x[..., -K:], rtol=0, atol=0)


@pytest.mark.parametrize("T", [1, 2, 6, 17])
def test_prefill_state_then_decode_equals_full_conv(T):
    x, w, b, resets, init = make(T=T + 5, seed=6 + T, resets_p=0.25)
    resets[:, T:] = False  # documents may start in the prefill, decode continues the last one
    K = w.shape[-1]
    y_full = causal_conv1d(x, w, b, resets, init, backend="torch")
    state = conv_state_after(x[..., :T], K, resets[:, :T], init)
    assert state.shape == (x.shape[0], x.shape[1], K)
    for t in range(T, T + 5):
        y_t, state = causal_conv1d_update(x[..., t], state, w, b, backend="torch")
        torch.testing.assert_close(y_t, y_full[..., t], rtol=1e-12, atol=1e-12)


def test_prefill_state_continues_a_second_prefill():
    x, w, b, resets, init = make(T=30, seed=7)
    resets[:, 0] = False
    K = w.shape[-1]
    y_full = causal_conv1d(x, w, b, resets, init, backend="torch")
    state = conv_state_after(x[..., :18], K, resets[:, :18], init)
    y_tail = causal_conv1d(x[..., 18:], w, b, resets[:, 18:], state[..., 1:], backend="torch")
    torch.testing.assert_close(y_tail, y_full[..., 18:], rtol=1e-12, atol=1e-12)


def test_bad_arguments():
    x, w, b, resets, init = make(seed=8)
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d(x, w, b, initial_state=init[..., :1], backend="torch")
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, b, activation="gelu", backend="torch")
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, w[:, :, :, None], b, backend="torch")
