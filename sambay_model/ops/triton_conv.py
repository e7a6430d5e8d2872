"""Triton kernels for the depthwise causal conv (the Mamba input conv) with document resets and an initial state,
forward and backward.

Same contract as ``conv.causal_conv1d_torch``. causal-conv1d accepts ``seq_idx`` or ``initial_states`` but not
both, and compiles at install time; these kernels take both and run wherever Triton does. Tap j (looking j
tokens back) of output t is live iff t's document started at least j tokens earlier (``pos[t] >= j``, from
``conv.positions_in_document``); taps before the sequence read ``initial_state``. Math in fp32, outputs and
input gradients in x's dtype. x may come in any strides; the output and dx take x's channel order (the model
passes a channel-last chunk of ``in_proj``'s output, so its output is channel-last too, which is what
``x_proj`` reads), and an output gradient in the other order is copied into x's before backward.

Forward: each program owns one [block_d channels, block_t tokens] tile. Backward: each program owns block_d
channels and walks up to ``TILES_PER_PROGRAM`` consecutive tiles of input positions; per tile it recomputes the
pre-activation of the K outputs each input feeds (2K - 1 shifted loads of x, from cache) instead of saving it,
writes dx (and d(initial_state) at the row's start), and adds the weight / bias gradient products to
[block_d, block_t] accumulators it reduces once at the end: no cross-thread reduction inside the time loop, and
per-program partial sums summed in PyTorch (deterministic, no atomics). ``kernel_launches`` builds the same
launches on meta tensors for ``bench.kernel_report``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .conv import check_conv_args, positions_in_document
from .kernel_launch import KernelLaunch, KernelShape

BLOCK_D = 32
BLOCK_T = 32
# Backward: tiles one program walks. At T = 8192, 257 tiles in 17 programs per channel block: 16 serial steps,
# 2,720 programs at batch 1 and d_inner 5120 (~20 per H100 SM), and 17 partial dweight rows to sum.
TILES_PER_PROGRAM = 16
# Backward: 8 warps give each thread 4 elements of a 32 x 32 tile; ptxas then wants 136 registers (one program,
# 8 warps, per SM), and capped at 128 it fits without spilling at sm_90: two programs, 16 warps, per SM.
BWD_WARPS = 8
BWD_MAX_REGISTERS = 128


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
def _preact(x_row, init_row, w_ptr, bias_ptr, p, d, dm, t, T, s_xt,
            K: tl.constexpr, HAS_INIT: tl.constexpr, HAS_BIAS: tl.constexpr,
            BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """Conv output before the activation at times ``t`` [BLOCK_T] (``p``: their document positions), fp32
    [BLOCK_D, BLOCK_T], and the K inputs it read (tap j: x at t - j) as a tuple."""
    z = tl.zeros((BLOCK_D, BLOCK_T), tl.float32)
    taps = ()
    for j in tl.static_range(K):
        wj = tl.load(w_ptr + d * K + (K - 1 - j), mask=dm, other=0.0).to(tl.float32)
        xj = _load_x(x_row, init_row, t - j, T, s_xt, dm, K, HAS_INIT)
        z += tl.where((p >= j)[None, :], wj[:, None] * xj, 0.0)
        taps = taps + (xj,)
    if HAS_BIAS:
        z += tl.load(bias_ptr + d, mask=dm, other=0.0).to(tl.float32)[:, None]
    return z, taps


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, pos_ptr, y_ptr, T, Dch, s_xb, s_xd, s_xt, s_yb, s_yd, s_yt,
    K: tl.constexpr, HAS_INIT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    dm = d < Dch
    x_row = x_ptr + b * s_xb + d * s_xd
    init_row = init_ptr + (b * Dch + d) * (K - 1)
    p = tl.load(pos_ptr + b * T + t, mask=t < T, other=0)
    z, _ = _preact(x_row, init_row, w_ptr, bias_ptr, p, d, dm, t, T, s_xt, K, HAS_INIT, HAS_BIAS, BLOCK_D, BLOCK_T)
    if SILU:
        z = z * tl.sigmoid(z)
    y_row = y_ptr + b * s_yb + d * s_yd
    tl.store(y_row[:, None] + t[None, :] * s_yt, z, mask=dm[:, None] & (t < T)[None, :])


@triton.jit
def _tile_grads(x_row, init_row, w_ptr, bias_ptr, pos_row, gy_row, d, dm, s, T, s_xt, s_gt,
                K: tl.constexpr, HAS_INIT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """For input positions ``s`` [BLOCK_T]: d(input) [BLOCK_D, BLOCK_T], and for the outputs t = s (each output
    is some tile's s exactly once) their pre-activation gradient, document positions and the K inputs they read."""
    g_in = tl.zeros((BLOCK_D, BLOCK_T), tl.float32)
    for j in tl.static_range(K):
        t = s + j  # the outputs that read input s through tap j
        tm = (t >= 0) & (t < T)
        p = tl.load(pos_row + t, mask=tm, other=0)
        z, taps = _preact(x_row, init_row, w_ptr, bias_ptr, p, d, dm, t, T, s_xt,
                          K, HAS_INIT, HAS_BIAS, BLOCK_D, BLOCK_T)
        gz = tl.load(gy_row[:, None] + t[None, :] * s_gt, mask=dm[:, None] & tm[None, :], other=0.0).to(tl.float32)
        if SILU:
            sig = tl.sigmoid(z)
            gz = gz * sig * (1.0 + z * (1.0 - sig))
        wj = tl.load(w_ptr + d * K + (K - 1 - j), mask=dm, other=0.0).to(tl.float32)
        g_in += tl.where((p >= j)[None, :], gz * wj[:, None], 0.0)
        if j == 0:
            gz_out, p_out, taps_out = gz, p, taps
    return g_in, gz_out, p_out, taps_out


@triton.jit
def _conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, pos_ptr, gy_ptr, gx_ptr, ginit_ptr, gw_ptr, gb_ptr,
    T, Dch, n_tiles, s_xb, s_xd, s_xt, s_gb, s_gd, s_gt, s_ob, s_od, s_ot,
    K: tl.constexpr, HAS_INIT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, TILES: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    split = tl.program_id(2)
    dm = d < Dch
    x_row = x_ptr + b * s_xb + d * s_xd
    gy_row = gy_ptr + b * s_gb + d * s_gd
    gx_row = gx_ptr + b * s_ob + d * s_od
    init_row = init_ptr + (b * Dch + d) * (K - 1)
    pos_row = pos_ptr + b * T
    acc_b = tl.zeros((BLOCK_D, BLOCK_T), tl.float32)
    acc_w = ()
    for i in tl.static_range(K):
        acc_w = acc_w + (tl.zeros((BLOCK_D, BLOCK_T), tl.float32),)
    for pt in range(split * TILES, tl.minimum(split * TILES + TILES, n_tiles)):
        # Input positions s cover [-(K-1), T): the negative ones are the initial state's slots.
        s = pt * BLOCK_T - (K - 1) + tl.arange(0, BLOCK_T)
        g_in, gz, p, taps = _tile_grads(x_row, init_row, w_ptr, bias_ptr, pos_row, gy_row, d, dm, s, T, s_xt, s_gt,
                                        K, HAS_INIT, HAS_BIAS, SILU, BLOCK_D, BLOCK_T)
        acc_b += gz
        new_w = ()
        for i in tl.static_range(K):
            new_w = new_w + (acc_w[i] + tl.where((p >= i)[None, :], gz * taps[i], 0.0),)
        acc_w = new_w
        tl.store(gx_row[:, None] + s[None, :] * s_ot, g_in, mask=dm[:, None] & ((s >= 0) & (s < T))[None, :])
        if HAS_INIT:
            before = dm[:, None] & (s < 0)[None, :]
            tl.store(ginit_ptr + ((b * Dch + d) * (K - 1))[:, None] + (s + K - 1)[None, :], g_in, mask=before)
    part = (split * tl.num_programs(0) + b) * Dch + d
    if HAS_BIAS:
        tl.store(gb_ptr + part, tl.sum(acc_b, axis=1), mask=dm)
    for i in tl.static_range(K):
        tl.store(gw_ptr + part * K + (K - 1 - i), tl.sum(acc_w[i], axis=1), mask=dm)


@dataclass(frozen=True)
class ConvGrads:
    """Backward's outputs: g_x (x's dtype and channel order), g_init [B, D, K-1] (init's dtype), and per-program
    partial sums g_w [n_split, B, D, K], g_b [n_split, B, D] in fp32."""

    g_x: torch.Tensor
    g_init: torch.Tensor
    g_w: torch.Tensor
    g_b: torch.Tensor


def _bwd_split(T: int, K: int, block_t: int, tiles_per_program: int) -> tuple[int, int]:
    """(tiles of input positions, programs along time) of backward."""
    n_tiles = triton.cdiv(T + K - 1, block_t)
    return n_tiles, triton.cdiv(n_tiles, tiles_per_program)


def _channel_last(t: torch.Tensor) -> bool:
    """Whether [B, D, T] ``t`` runs along channels in memory (the two orders coincide when D or T is 1)."""
    return t.stride(1) == 1 and t.shape[1] > 1 and t.shape[2] > 1


def _like_x(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty [B, D, T] tensor in x's channel order (channel-last when x is), x's dtype unless given."""
    Bsz, Dch, T = x.shape
    kw = dict(dtype=dtype or x.dtype, device=x.device)
    if _channel_last(x):
        return torch.empty(Bsz, T, Dch, **kw).transpose(1, 2)
    return torch.empty(Bsz, Dch, T, **kw)


def conv_grads(x: torch.Tensor, K: int, init: torch.Tensor | None, block_t: int,
               tiles_per_program: int) -> ConvGrads:
    """Backward's output buffers for input x [B, D, T] and K taps; the partial sums start at zero."""
    Bsz, Dch, T = x.shape
    n_split = _bwd_split(T, K, block_t, tiles_per_program)[1]
    f32 = dict(dtype=torch.float32, device=x.device)
    init_dtype = x.dtype if init is None else init.dtype
    return ConvGrads(_like_x(x), torch.empty(Bsz, Dch, K - 1, dtype=init_dtype, device=x.device),
                     torch.zeros(n_split, Bsz, Dch, K, **f32), torch.zeros(n_split, Bsz, Dch, **f32))


def fwd_launch(x, w, bias, init, pos, y, silu: bool, block_d: int, block_t: int) -> KernelLaunch:
    """x and y [B, D, T] in any strides (``_like_x``: y in x's order, so loads and stores share one layout),
    w [D, K] contiguous."""
    Bsz, Dch, T = x.shape
    K = w.shape[-1]
    grid = (Bsz, triton.cdiv(Dch, block_d), triton.cdiv(T, block_t))
    args = (x, w, w if bias is None else bias, w if init is None else init, pos, y, T, Dch, *x.stride(), *y.stride(),
            K, init is not None, bias is not None, silu, block_d, block_t)
    return KernelLaunch("conv_fwd", "conv forward", _conv_fwd_kernel, grid, args, serial_steps=1)


def bwd_launch(x, w, bias, init, pos, g_y, grads: ConvGrads, silu: bool, block_d: int, block_t: int,
               tiles_per_program: int) -> KernelLaunch:
    """g_y [B, D, T] in any strides, fastest in x's channel order (``CausalConv1dTriton.backward`` sees to it);
    ``grads`` from ``conv_grads`` with the same ``block_t`` / ``tiles_per_program``."""
    Bsz, Dch, T = x.shape
    K = w.shape[-1]
    n_tiles, n_split = _bwd_split(T, K, block_t, tiles_per_program)
    grid = (Bsz, triton.cdiv(Dch, block_d), n_split)
    args = (x, w, w if bias is None else bias, w if init is None else init, pos, g_y,
            grads.g_x, grads.g_init, grads.g_w, grads.g_b, T, Dch, n_tiles,
            *x.stride(), *g_y.stride(), *grads.g_x.stride(),
            K, init is not None, bias is not None, silu, block_d, block_t, tiles_per_program)
    return KernelLaunch("conv_bwd", "conv backward", _conv_bwd_kernel, grid, args,
                        serial_steps=min(n_tiles, tiles_per_program),
                        options=dict(num_warps=BWD_WARPS, maxnreg=BWD_MAX_REGISTERS))


class CausalConv1dTriton(torch.autograd.Function):
    """x [B, D, T], w [D, K], bias [D] or None, init [B, D, K-1] or None, pos [B, T] int32 (clamped to K)."""

    @staticmethod
    def forward(ctx, x, w, bias, init, pos, silu, block_d, block_t, tiles_per_program):
        y = _like_x(x)
        wc = w.contiguous()
        fwd_launch(x, wc, bias, init, pos, y, silu, block_d, block_t).run()
        ctx.save_for_backward(x, wc, bias, init, pos)
        ctx.config = (silu, block_d, block_t, tiles_per_program, w.dtype)
        return y

    @staticmethod
    def backward(ctx, g_y):
        x, wc, bias, init, pos = ctx.saved_tensors
        silu, block_d, block_t, tiles_per_program, w_dtype = ctx.config
        if _channel_last(g_y) != _channel_last(x):
            # Read in two channel orders, backward would transpose tiles through shared memory in its time loop
            # and spill (compiled for sm_90); one copy costs less. The model's gradient arrives in x's order.
            g_y = _like_x(x, g_y.dtype).copy_(g_y)
        grads = conv_grads(x, wc.shape[-1], init, block_t, tiles_per_program)
        bwd_launch(x, wc, bias, init, pos, g_y, grads, silu, block_d, block_t, tiles_per_program).run()
        return (grads.g_x, grads.g_w.sum((0, 1)).to(w_dtype),
                None if bias is None else grads.g_b.sum((0, 1)).to(bias.dtype),
                None if init is None else grads.g_init, None, None, None, None, None)


def causal_conv1d_triton(x, weight, bias=None, resets=None, initial_state=None, activation="silu",
                         *, block_d: int = BLOCK_D, block_t: int = BLOCK_T,
                         tiles_per_program: int = TILES_PER_PROGRAM):
    """Triton depthwise causal conv; contract of ``conv.causal_conv1d_torch``. ``block_d`` / ``block_t``: tile
    shape, ``tiles_per_program``: tiles one backward program walks (tests shrink them to cross tile and program
    edges)."""
    w = check_conv_args(x, weight, resets, initial_state, activation)
    Bsz, Dch, T = x.shape
    K = w.shape[-1]
    if resets is None:
        pos = torch.full((Bsz, T), K, dtype=torch.int32, device=x.device)
    else:
        pos = positions_in_document(resets).clamp(max=K).to(torch.int32).contiguous()
    init = None if initial_state is None else initial_state.to(x.dtype).contiguous()
    return CausalConv1dTriton.apply(x, w, bias, init, pos, activation is not None, block_d, block_t,
                                    tiles_per_program)


def kernel_launches(shape: KernelShape) -> list[KernelLaunch]:
    """Forward and backward at ``shape`` on meta tensors, laid out as the model's Mamba layer passes them in
    packed training: x is the first half of ``in_proj``'s [B, T, 2 d_inner] output seen as [B, d_inner, T], so
    channel-last; the output follows x's order, and so does its gradient (``x_proj`` reads the output transposed,
    the scan's du has u's strides; backward copies any other order into x's); fp32 weight and bias, document
    resets (so ``pos`` is read), no initial state."""
    Bsz, T, Dch, K = shape.batch, shape.seqlen, shape.d_inner, shape.d_conv
    meta = dict(device="meta")
    x = torch.empty(Bsz, T, 2 * Dch, dtype=shape.dtype, **meta).transpose(1, 2)[:, :Dch]
    w = torch.empty(Dch, K, **meta)
    bias = torch.empty(Dch, **meta)
    pos = torch.empty(Bsz, T, dtype=torch.int32, **meta)
    y = _like_x(x)
    g_y = _like_x(x)
    grads = conv_grads(x, K, None, BLOCK_T, TILES_PER_PROGRAM)
    return [fwd_launch(x, w, bias, None, pos, y, True, BLOCK_D, BLOCK_T),
            bwd_launch(x, w, bias, None, pos, g_y, grads, True, BLOCK_D, BLOCK_T, TILES_PER_PROGRAM)]
