"""The Triton conv's backward geometry under Triton's interpreter: several programs along time (partial dweight
and dbias sums, dx tiles of one row written by different programs), the strides the model passes (x a chunk of
a channel-last [B, T, 2D] tensor, the output and its gradient channel-last), an output gradient in the other
channel order, resets on tile and program edges, the initial state. Collected only through
``test_ops_triton_conv.py``, which runs this file in a fresh process with TRITON_INTERPRET=1 (why:
``triton_interpreter_cases.py``'s docstring).
"""
import os

if os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("triton_conv_interpreter_cases.py needs TRITON_INTERPRET=1 set before Python starts; "
                       "run it through tests/sambay_model/test_ops_triton_conv.py")

import pytest  # noqa: E402
import torch  # noqa: E402

from sambay_model.ops import triton_conv  # noqa: E402
from sambay_model.ops.conv import causal_conv1d_torch  # noqa: E402

Bsz, Dch, T, K = 2, 6, 19, 4  # 6 channels in blocks of 4: a partial block; T odd, not a multiple of the tile
BLOCK_D, BLOCK_T = 4, 4  # input-position tiles start at -3, 1, 5, 9, 13, 17: six tiles


def _resets() -> torch.Tensor:
    r = torch.zeros(Bsz, T, dtype=torch.bool)
    r[0, 5] = True  # a tile's first output
    r[0, 9] = r[0, 10] = True  # consecutive, on the edge of the second program when it walks two tiles
    r[0, 13] = True  # edge of the third program (two tiles each) or the fourth (one tile each)
    r[0, T - 1] = True  # last token
    r[1, 0] = True  # first token: the initial state must not matter
    return r


def _leaves(x_layout: str, dtype: torch.dtype) -> dict:
    """Leaf tensors; with ``x_layout`` "model", x is read through ``_inputs`` as the model reads it."""
    g = torch.Generator().manual_seed(0)
    x_shape = (Bsz, T, 2 * Dch) if x_layout == "model" else (Bsz, Dch, T)
    return dict(x=torch.randn(*x_shape, generator=g).to(dtype), weight=torch.randn(Dch, K, generator=g),
                bias=torch.randn(Dch, generator=g), initial_state=torch.randn(Bsz, Dch, K - 1, generator=g).to(dtype))


def _inputs(leaves: dict) -> dict:
    x = leaves["x"]
    if x.shape[1] == T:  # x = in_proj(h).transpose(1, 2).chunk(2, dim=1)[0]: strides (2DT, 1, 2D)
        x = x.transpose(1, 2)[:, :Dch]
    return dict(leaves, x=x)


def _run(fn, leaves: dict, upstream: torch.Tensor, grad_layout: str):
    """Output and every leaf's gradient, the output gradient handed over channel-last or [B, D, T] contiguous."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    y = fn(**_inputs(leaves))
    if grad_layout == "channel-last":  # as from x_proj(u.transpose(1, 2))
        g_y = upstream.transpose(1, 2).contiguous().transpose(1, 2)
    else:
        g_y = upstream.contiguous()
    y.backward(g_y.to(y.dtype))
    return y.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("tiles_per_program", [1, 2, 16])
@pytest.mark.parametrize("x_layout, grad_layout", [
    ("model", "channel-last"), ("contiguous", "contiguous"),
    ("model", "contiguous"), ("contiguous", "channel-last"),  # orders differ: backward copies the gradient
])
def test_backward_across_programs_matches_torch(tiles_per_program, x_layout, grad_layout, monkeypatch):
    seen = []
    launch = triton_conv.bwd_launch
    monkeypatch.setattr(triton_conv, "bwd_launch", lambda *a: seen.append(a) or launch(*a))
    leaves, r = _leaves(x_layout, torch.float32), _resets()
    upstream = torch.randn(Bsz, Dch, T, generator=torch.Generator().manual_seed(1))
    got = _run(lambda **kw: triton_conv.causal_conv1d_triton(
        **kw, resets=r, block_d=BLOCK_D, block_t=BLOCK_T, tiles_per_program=tiles_per_program),
        leaves, upstream, grad_layout)
    want = _run(lambda **kw: causal_conv1d_torch(**kw, resets=r), leaves, upstream, grad_layout)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-5, atol=1e-5, msg=name)
    assert torch.count_nonzero(got[1]["initial_state"][1]) == 0  # row 1 resets at its first token
    x, g_y, grads = seen[0][0], seen[0][5], seen[0][6]
    channel_last = x_layout == "model"
    assert x.stride() == ((2 * Dch * T, 1, 2 * Dch) if channel_last else (Dch * T, T, 1))
    # The kernel reads the output gradient and writes dx in x's channel order, whatever order the gradient had.
    assert (g_y.stride(1) == 1, grads.g_x.stride(1) == 1) == (channel_last, channel_last)
    assert grads.g_w.shape[0] == -(-triton_conv.triton.cdiv(T + K - 1, BLOCK_T) // tiles_per_program)


def test_bf16_model_layout_matches_fp32_torch():
    """bf16 in, fp32 math, bf16 out: the output is the fp32 reference's rounded once, within one bf16 ulp (2^-7
    relative: the interpreter truncates on a bf16 store, where the GPU rounds to nearest), plus fp32 noise."""
    leaves, r = _leaves("model", torch.bfloat16), _resets()
    upstream = torch.randn(Bsz, Dch, T, generator=torch.Generator().manual_seed(2))
    got = _run(lambda **kw: triton_conv.causal_conv1d_triton(
        **kw, resets=r, block_d=BLOCK_D, block_t=BLOCK_T, tiles_per_program=2), leaves, upstream, "channel-last")
    assert got[0].stride(1) == 1  # the output follows x's channel order
    fp32 = {k: v.float() for k, v in leaves.items()}
    want = _run(lambda **kw: causal_conv1d_torch(**kw, resets=r), fp32, upstream, "channel-last")
    torch.testing.assert_close(got[0].float(), want[0], rtol=2 ** -7 + 1e-6, atol=1e-6)
    for name in want[1]:
        assert got[1][name].dtype == leaves[name].dtype, name
        torch.testing.assert_close(got[1][name].float(), want[1][name], rtol=2e-2, atol=2e-2, msg=name)
