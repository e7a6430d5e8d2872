"""Triton kernels for the depthwise causal conv (the Mamba input conv) with document resets and an initial state,
forward and backward.

Same contract as ``conv.causal_conv1d_torch``. causal-conv1d accepts ``seq_idx`` or ``initial_states`` but not
both, and compiles at install time; these kernels take both and run wherever Triton does. Tap j (looking j
tokens back) of output t is live iff t's document started at least j tokens earlier (``pos[t] >= j``, from
``conv.positions_in_document``); taps before the sequence read ``initial_state``. Each program owns a
[block_d channels, block_t tokens] tile; math in fp32, outputs in x's dtype.

Backward recomputes the pre-activation (K^2 loads per tile, K = 4) instead of saving it, and produces dx,
d(initial_state), and per-tile partial sums of dweight / dbias (summed in PyTorch: deterministic, no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv import check_conv_args, positions_in_document

BLOCK_D = 32
BLOCK_T = 64


@triton.jit
def _load_x(x_row, init_row, src, T, s_xt, dm, K: tl.constexpr, HAS_INIT: tl.constexpr):
    """x at time indices ``src`` [BLOCK_T] (may be negative: then the initial state), fp32 [BLOCK_D, BLOCK_T]."""
    inside = (src >= 0) & (src < T)
    val = tl.load(x_row[:, None] + src[None, :] * s_xt, mask=dm[:, None] & inside[None, :], other=0.0)
    val = val.to(tl.float32)
    if HAS_INIT:
        before = (src < 0) & (src >= 1 - K)
        prev = tl.load(init_row[:, None] + (src + K - 1)[None, :], mask=dm[:, None] & before[None, :], other=0.0)
        val += prev.to(tl.float32)
    return val


@triton.jit
def _preact(x_row, init_row, w_ptr, bias_ptr, pos_row, d, dm, t, T, s_xt,
            K: tl.constexpr, HAS_INIT: tl.constexpr, HAS_BIAS: tl.constexpr,
            BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """Conv output before the activation at times ``t`` [BLOCK_T], fp32 [BLOCK_D, BLOCK_T]."""
    p = tl.load(pos_row + t, mask=(t >= 0) & (t < T), other=0)
    z = tl.zeros((BLOCK_D, BLOCK_T), tl.float32)
    for j in tl.static_range(K):
        wj = tl.load(w_ptr + d * K + (K - 1 - j), mask=dm, other=0.0).to(tl.float32)
        xj = _load_x(x_row, init_row, t - j, T, s_xt, dm, K, HAS_INIT)
        z += tl.where((p >= j)[None, :], wj[:, None] * xj, 0.0)
    if HAS_BIAS:
        z += tl.load(bias_ptr + d, mask=dm, other=0.0).to(tl.float32)[:, None]
    return z


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, pos_ptr, y_ptr, T, Dch, s_xb, s_xd, s_xt,
    K: tl.constexpr, HAS_INIT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    dm = d < Dch
    x_row = x_ptr + b * s_xb + d * s_xd
    init_row = init_ptr + (b * Dch + d) * (K - 1)
    z = _preact(x_row, init_row, w_ptr, bias_ptr, pos_ptr + b * T, d, dm, t, T, s_xt,
                K, HAS_INIT, HAS_BIAS, BLOCK_D, BLOCK_T)
    if SILU:
        z = z * tl.sigmoid(z)
    tl.store(y_ptr + ((b * Dch + d) * T)[:, None] + t[None, :], z, mask=dm[:, None] & (t < T)[None, :])


@triton.jit
def _conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, pos_ptr, gy_ptr, gx_ptr, ginit_ptr, gw_ptr, gb_ptr,
    T, Dch, s_xb, s_xd, s_xt,
    K: tl.constexpr, HAS_INIT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pt = tl.program_id(2)
    # Input positions s cover [-(K-1), T): the negative ones are the initial state's slots.
    s = pt * BLOCK_T - (K - 1) + tl.arange(0, BLOCK_T)
    dm = d < Dch
    x_row = x_ptr + b * s_xb + d * s_xd
    init_row = init_ptr + (b * Dch + d) * (K - 1)
    pos_row = pos_ptr + b * T
    seq_row = (b * Dch + d) * T
    g_in = tl.zeros((BLOCK_D, BLOCK_T), tl.float32)
    for j in tl.static_range(K):
        t = s + j  # the outputs that read input s through tap j
        tm = (t >= 0) & (t < T)
        z = _preact(x_row, init_row, w_ptr, bias_ptr, pos_row, d, dm, t, T, s_xt,
                    K, HAS_INIT, HAS_BIAS, BLOCK_D, BLOCK_T)
        gz = tl.load(gy_ptr + seq_row[:, None] + t[None, :], mask=dm[:, None] & tm[None, :], other=0.0)
        if SILU:
            sig = tl.sigmoid(z)
            gz = gz * sig * (1.0 + z * (1.0 - sig))
        p = tl.load(pos_row + t, mask=tm, other=0)
        wj = tl.load(w_ptr + d * K + (K - 1 - j), mask=dm, other=0.0).to(tl.float32)
        g_in += tl.where((p >= j)[None, :], gz * wj[:, None], 0.0)
        if j == 0:
            # Weight / bias gradients of the outputs t = s (each output belongs to exactly one tile).
            part = (pt * tl.num_programs(0) + b) * Dch + d
            if HAS_BIAS:
                tl.store(gb_ptr + part, tl.sum(gz, axis=1), mask=dm)
            for i in tl.static_range(K):
                xi = _load_x(x_row, init_row, t - i, T, s_xt, dm, K, HAS_INIT)
                gw = tl.sum(tl.where((p >= i)[None, :], gz * xi, 0.0), axis=1)
                tl.store(gw_ptr + part * K + (K - 1 - i), gw, mask=dm)
    inside = dm[:, None] & ((s >= 0) & (s < T))[None, :]
    tl.store(gx_ptr + seq_row[:, None] + s[None, :], g_in, mask=inside)
    if HAS_INIT:
        before = dm[:, None] & (s < 0)[None, :]
        tl.store(ginit_ptr + ((b * Dch + d) * (K - 1))[:, None] + (s + K - 1)[None, :], g_in, mask=before)


class CausalConv1dTriton(torch.autograd.Function):
    """x [B, D, T], w [D, K], bias [D] or None, init [B, D, K-1] or None, pos [B, T] int32 (clamped to K)."""

    @staticmethod
    def forward(ctx, x, w, bias, init, pos, silu, block_d, block_t):
        Bsz, Dch, T = x.shape
        K = w.shape[-1]
        y = torch.empty(Bsz, Dch, T, dtype=x.dtype, device=x.device)
        wc = w.contiguous()
        grid = (Bsz, triton.cdiv(Dch, block_d), triton.cdiv(T, block_t))
        _conv_fwd_kernel[grid](
            x, wc, wc if bias is None else bias, wc if init is None else init, pos, y, T, Dch, *x.stride(),
            K=K, HAS_INIT=init is not None, HAS_BIAS=bias is not None, SILU=silu, BLOCK_D=block_d, BLOCK_T=block_t,
        )
        ctx.save_for_backward(x, wc, bias, init, pos)
        ctx.config = (silu, block_d, block_t, w.dtype)
        return y

    @staticmethod
    def backward(ctx, g_y):
        x, wc, bias, init, pos = ctx.saved_tensors
        silu, block_d, block_t, w_dtype = ctx.config
        Bsz, Dch, T = x.shape
        K = wc.shape[-1]
        f32 = dict(dtype=torch.float32, device=x.device)
        n_tiles = triton.cdiv(T + K - 1, block_t)
        g_x = torch.empty(Bsz, Dch, T, **f32)
        g_init = torch.empty(Bsz, Dch, K - 1, **f32)
        g_w = torch.zeros(n_tiles, Bsz, Dch, K, **f32)
        g_b = torch.zeros(n_tiles, Bsz, Dch, **f32)
        grid = (Bsz, triton.cdiv(Dch, block_d), n_tiles)
        _conv_bwd_kernel[grid](
            x, wc, wc if bias is None else bias, wc if init is None else init, pos, g_y.contiguous(),
            g_x, g_init, g_w, g_b, T, Dch, *x.stride(),
            K=K, HAS_INIT=init is not None, HAS_BIAS=bias is not None, SILU=silu, BLOCK_D=block_d, BLOCK_T=block_t,
        )
        return (g_x.to(x.dtype), g_w.sum((0, 1)).to(w_dtype), None if bias is None else g_b.sum((0, 1)).to(bias.dtype),
                None if init is None else g_init.to(init.dtype), None, None, None, None)


def causal_conv1d_triton(x, weight, bias=None, resets=None, initial_state=None, activation="silu",
                         *, block_d: int = BLOCK_D, block_t: int = BLOCK_T):
    """Triton depthwise causal conv; contract of ``conv.causal_conv1d_torch``. ``block_d`` / ``block_t``: tile
    shape (tests shrink it to cross tile edges)."""
    w = check_conv_args(x, weight, resets, initial_state, activation)
    Bsz, Dch, T = x.shape
    K = w.shape[-1]
    if resets is None:
        pos = torch.full((Bsz, T), K, dtype=torch.int32, device=x.device)
    else:
        pos = positions_in_document(resets).clamp(max=K).to(torch.int32).contiguous()
    init = None if initial_state is None else initial_state.to(x.dtype).contiguous()
    return CausalConv1dTriton.apply(x, w, bias, init, pos, activation is not None, block_d, block_t)
