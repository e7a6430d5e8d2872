"""Triton kernels for the Mamba-1 selective scan with per-token document resets (forward and backward) and for
its one-token decode step.

mamba-ssm's Mamba-1 kernel has no document reset, initial state or per-token reset, so packed rows could not use
it; these kernels implement exactly ``selective_scan.selective_scan_torch``'s recurrence
h_t = a_t h_{t-1} + x_t with a_t = exp(delta_t A) (0 at a reset) and x_t = delta_t u_t B_t, y_t = C_t h_t + D u_t.

The scan is parallel over time as well as over channels and batch rows. The sequence is cut into chunks of
``chunk`` tokens, and each forward and backward is three launches:

1. chunk summary (parallel over chunks): each chunk's end state from a zero start, sum_t (prod_{s>t} a_s) x_t,
   written as exp(A * (sum of delta after t)) through a cumulative sum of delta (one exp per state, no scan);
   a reset is a zero weight for every token before it. Also each chunk's delta sum (its total decay).
2. carry (serial over chunks, one [channels, d_state] state per program in registers): the true state entering
   each chunk, h_start[c + 1] = summary[c] + exp(A * delta_sum[c]) * keep_all[c] * h_start[c]; its last value is
   the last state. T / chunk steps: the only loop over time in any program.
3. output (parallel over chunks): each chunk re-scanned from its true start with ``tl.associative_scan`` and the
   linear-recurrence combine (a1, x1), (a2, x2) -> (a1 a2, a2 x1 + x2), a reset being a zero decay; writes y.

softplus(delta + delta_bias), the D * u skip and the cast of y to u's dtype are fused in the kernels: no fp32
[B, D, T] tensor is allocated. Backward mirrors it for the adjoint G_t = dL/dh_t = C_t gy_t + a_{t+1} G_{t+1}:
summary of each chunk's gradient entering from its start, carry in reverse (its last value is dL/d initial
state), then one kernel that recomputes each chunk's states from the saved chunk starts (forward saves only
those: d_state / chunk fp32 values per input element), runs the adjoint as a reverse associative scan, and
writes du and d_delta (through softplus) directly; dA, dD, d_delta_bias are per-chunk partials and dB, dC
per-program partials over that program's channels (summed in registers across its channel blocks), all summed
after the launch. Inputs may be bf16 or fp32 in any strides (the model passes transposed views); state and
accumulation are fp32. Every launch is built as a ``launch.KernelLaunch``; ``kernel_launches`` builds them at a
given shape for ``bench.kernel_report``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .kernel_launch import KernelLaunch, KernelShape
from .selective_scan import check_scan_shapes

_LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * log2(e)): A is pre-scaled once per tile


@dataclass(frozen=True)
class ScanTiling:
    """Tile sizes of the scan kernels (tests shrink them to cross every tile edge at tiny sizes).

    - ``chunk=64``: tokens per chunk. Each chunk is scanned in parallel; the carry pass walks T / chunk chunks one
      after the other (128 at T = 8192, the bound ``bench.kernel_report`` checks).
    - ``block_d=4``: channels of one scan tile [block_d, d_state, chunk] (4 x 16 x 64: 32 fp32 values per thread
      and per array at 4 warps).
    - ``channel_blocks=4``: channel blocks one forward program loops over, loading its B / C tile once for them.
    - ``carry_block_d=8``: channels per program of the carry pass (batch * d_inner / 8 programs: 640 at batch 1,
      d_inner 5120, about 5 per SM of an H100).
    - ``bwd_block_d=1``: channels of the backward kernel's tile [bwd_block_d, d_state, chunk]: it keeps about
      twice as many tiles live as forward, and at 4 channels it needs 255 registers per thread at 8 warps (spills
      at 4), at 1 channel 138 registers at 4 warps, no spill (compiled for sm_90 with Triton 3.9).
    - ``bwd_programs=1024``: the backward kernel's target grid; each program loops over as many channel blocks as
      that leaves, summing dB and dC over them in registers (fewer programs: smaller dB / dC partials).
    """

    chunk: int = 64
    block_d: int = 4
    channel_blocks: int = 4
    carry_block_d: int = 8
    bwd_block_d: int = 1
    bwd_programs: int = 1024


STATE_BLOCK_D = 8  # channels per program of the decode step: batch * d_inner / 8 programs
_WARPS = {"summary": 4, "carry": 1, "output": 4, "backward": 4, "state": 1}


# ------------------------------------------------------------------------------------------ shared pieces


@triton.jit
def _combine(a1, x1, a2, x2):
    """Linear recurrence h = a h_prev + x: (a1, x1) then (a2, x2) is (a1 a2, a2 x1 + x2)."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _load_seq(ptr, d, dm, t, tm, s_d, s_t):
    """A [channels, time] tile of a [B, D, T] tensor (row already offset) as fp32, 0 outside it."""
    m = dm[:, None] & tm[None, :]
    return tl.load(ptr + d[:, None] * s_d + t[None, :] * s_t, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _load_dt(delta_ptr, bias_ptr, d, dm, t, tm, s_d, s_t, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(delta + bias, softplus of it) as fp32 [channels, time]; the step is 0 outside the tensor."""
    raw = _load_seq(delta_ptr, d, dm, t, tm, s_d, s_t)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + d, mask=dm, other=0.0).to(tl.float32)[:, None]
    dt = raw
    if SOFTPLUS:
        dt = tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(raw)))  # F.softplus with its default threshold
    return raw, tl.where(dm[:, None] & tm[None, :], dt, 0.0)


@triton.jit
def _load_A2(A_ptr, d, dm, n, nm, N):
    """A * log2(e) as fp32 [channels, d_state]."""
    m = dm[:, None] & nm[None, :]
    return tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m, other=0.0).to(tl.float32) * _LOG2E


@triton.jit
def _chunk_states(A2, dt, u, Bm, keep, h0):
    """States h_t [channels, d_state, time] of one chunk from its start state h0, and the inputs x_t."""
    a = tl.exp2(A2[:, :, None] * dt[:, None, :]) * keep[None, None, :]
    x = (dt * u)[:, None, :] * Bm[None, :, :]
    P, H = tl.associative_scan((a, x), 2, _combine)
    return H + P * h0[:, :, None], x


# ------------------------------------------------------------------------------------------------ kernels


@triton.jit
def _chunk_summary_kernel(
    delta_ptr, bias_ptr, v_ptr, M_ptr, keep_ptr, A_ptr, out_ptr, dsum_ptr,
    T, Dch, N, n_chunks,
    s_db, s_dd, s_dt, s_vb, s_vd, s_vt, s_mb, s_mn, s_mt,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, GRAD: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, CHANNEL_BLOCKS: tl.constexpr,
):
    """Per chunk, from a zero carry: forward (v = u, M = B) the end state sum_t (prod_{s>t} a_s) x_t and the delta
    sum; backward (GRAD, v = dy, M = C) the gradient entering the chunk, sum_t (prod_{s<=t} a_s) C_t dy_t."""
    c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    i = tl.arange(0, CHUNK)
    t = c * CHUNK + i
    tm = t < T
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    keep = tl.load(keep_ptr + b * T + t, mask=tm, other=1.0)
    M = _load_seq(M_ptr + b * s_mb, n, nm, t, tm, s_mn, s_mt)
    if GRAD:  # a reset at r cuts every token from r on off the chunk start
        live = i < tl.min(tl.where(keep == 0.0, i, CHUNK), axis=0)
    else:  # a reset at r cuts every token before r off the chunk end
        live = i >= tl.max(tl.where(keep == 0.0, i, 0), axis=0)
    for j in range(CHANNEL_BLOCKS):
        d = (tl.program_id(0) * CHANNEL_BLOCKS + j) * BLOCK_D + tl.arange(0, BLOCK_D)
        dm = d < Dch
        _, dt = _load_dt(delta_ptr + b * s_db, bias_ptr, d, dm, t, tm, s_dd, s_dt, HAS_BIAS, SOFTPLUS)
        v = _load_seq(v_ptr + b * s_vb, d, dm, t, tm, s_vd, s_vt)
        cum = tl.cumsum(dt, axis=1)
        if GRAD:
            expo = cum
        else:
            total = tl.sum(dt, axis=1)
            expo = total[:, None] - cum  # delta summed over the tokens after t
            v = v * dt
            tl.store(dsum_ptr + (b * n_chunks + c) * Dch + d, total, mask=dm)
        w = tl.exp2(_load_A2(A_ptr, d, dm, n, nm, N)[:, :, None] * expo[:, None, :])
        w = tl.where(live[None, None, :], w, 0.0)
        out = tl.sum(w * (v[:, None, :] * M[None, :, :]), axis=2)
        off = ((b * n_chunks + c) * Dch + d[:, None]) * N + n[None, :]
        tl.store(out_ptr + off, out, mask=dm[:, None] & nm[None, :])


@triton.jit
def _chunk_carry_kernel(
    state_ptr, dsum_ptr, ckeep_ptr, A_ptr, init_ptr, final_ptr, Dch, N, n_chunks,
    HAS_INIT: tl.constexpr, REVERSE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Walks the chunks (backwards when REVERSE), replacing each chunk's summary in ``state_ptr`` by the carry
    entering it; the carry after the last chunk goes to ``final_ptr``."""
    b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dm = d < Dch
    m2 = dm[:, None] & (n < N)[None, :]
    A2 = _load_A2(A_ptr, d, dm, n, n < N, N)
    off = d[:, None] * N + n[None, :]
    carry = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    if HAS_INIT:
        carry = tl.load(init_ptr + b * Dch * N + off, mask=m2, other=0.0).to(tl.float32)
    for k in range(n_chunks):
        if REVERSE:
            c = n_chunks - 1 - k
        else:
            c = k
        row = b * n_chunks + c
        summary = tl.load(state_ptr + row * Dch * N + off, mask=m2, other=0.0)
        total = tl.load(dsum_ptr + row * Dch + d, mask=dm, other=0.0)
        keep_all = tl.load(ckeep_ptr + row)
        tl.store(state_ptr + row * Dch * N + off, carry, mask=m2)
        carry = summary + tl.exp2(A2 * total[:, None]) * keep_all * carry
    tl.store(final_ptr + b * Dch * N + off, carry, mask=m2)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, keep_ptr, start_ptr, y_ptr,
    T, Dch, N, n_chunks,
    s_ub, s_ud, s_ut, s_db, s_dd, s_dt, s_bb, s_bn, s_bt, s_cb, s_cn, s_ct,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, CHANNEL_BLOCKS: tl.constexpr,
):
    """y of one chunk for CHANNEL_BLOCKS channel blocks, scanned in parallel from the chunk's true start state."""
    c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    t = c * CHUNK + tl.arange(0, CHUNK)
    tm = t < T
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    keep = tl.load(keep_ptr + b * T + t, mask=tm, other=1.0)
    Bm = _load_seq(B_ptr + b * s_bb, n, nm, t, tm, s_bn, s_bt)
    Cm = _load_seq(C_ptr + b * s_cb, n, nm, t, tm, s_cn, s_ct)
    for j in range(CHANNEL_BLOCKS):
        d = (tl.program_id(0) * CHANNEL_BLOCKS + j) * BLOCK_D + tl.arange(0, BLOCK_D)
        dm = d < Dch
        _, dt = _load_dt(delta_ptr + b * s_db, bias_ptr, d, dm, t, tm, s_dd, s_dt, HAS_BIAS, SOFTPLUS)
        u = _load_seq(u_ptr + b * s_ub, d, dm, t, tm, s_ud, s_ut)
        m2 = dm[:, None] & nm[None, :]
        h0 = tl.load(start_ptr + ((b * n_chunks + c) * Dch + d[:, None]) * N + n[None, :], mask=m2, other=0.0)
        h, _ = _chunk_states(_load_A2(A_ptr, d, dm, n, nm, N), dt, u, Bm, keep, h0)
        y = tl.sum(h * Cm[None, :, :], axis=1)
        if HAS_D:
            y += tl.load(D_ptr + d, mask=dm, other=0.0).to(tl.float32)[:, None] * u
        tl.store(y_ptr + (b * Dch + d[:, None]) * T + t[None, :], y, mask=dm[:, None] & tm[None, :])


@triton.jit
def _adjoint(A2, delta_ptr, bias_ptr, keep_ptr, d, dm, t, T, t_end, s_dd, s_dt, gy, Cm, g_end,
             HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """G_t = dL/dh_t over one chunk: a reverse scan of G_t = C_t gy_t + a_{t+1} G_{t+1}, seeded with ``g_end``,
    the gradient entering from after the chunk. a_{t+1} is recomputed from the next token's delta (1 past the
    chunk's end, where ``g_end`` already carries that decay)."""
    nxt = t + 1
    nm = (nxt < T) & (nxt < t_end)
    _, dt_next = _load_dt(delta_ptr, bias_ptr, d, dm, nxt, nm, s_dd, s_dt, HAS_BIAS, SOFTPLUS)
    keep_next = tl.load(keep_ptr + nxt, mask=nm, other=1.0)
    alpha = tl.exp2(A2[:, :, None] * dt_next[:, None, :]) * keep_next[None, None, :]
    Q, G = tl.associative_scan((alpha, gy[:, None, :] * Cm[None, :, :]), 2, _combine, reverse=True)
    return G + Q * g_end[:, :, None]


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, keep_ptr, start_ptr, gend_ptr, gy_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
    T, Dch, N, n_chunks, n_groups,
    s_ub, s_ud, s_ut, s_db, s_dd, s_dt, s_bb, s_bn, s_bt, s_cb, s_cn, s_ct, s_gb, s_gd, s_gt,
    s_dub, s_dud, s_dut, s_ddb, s_ddd, s_ddt,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, CHANNEL_BLOCKS: tl.constexpr,
):
    """Gradients of one chunk for CHANNEL_BLOCKS channel blocks: du, d_delta written; dA, dD, d_delta_bias per
    chunk and dB, dC per (program, token) as partials (dB, dC summed over the program's channels here)."""
    g = tl.program_id(0)
    c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    t = c * CHUNK + tl.arange(0, CHUNK)
    tm = t < T
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    keep = tl.load(keep_ptr + b * T + t, mask=tm, other=1.0)
    Bm = _load_seq(B_ptr + b * s_bb, n, nm, t, tm, s_bn, s_bt)
    Cm = _load_seq(C_ptr + b * s_cb, n, nm, t, tm, s_cn, s_ct)
    dB = tl.zeros((BLOCK_N, CHUNK), tl.float32)
    dC = tl.zeros((BLOCK_N, CHUNK), tl.float32)
    for j in range(CHANNEL_BLOCKS):
        d = (g * CHANNEL_BLOCKS + j) * BLOCK_D + tl.arange(0, BLOCK_D)
        dm = d < Dch
        m2 = dm[:, None] & nm[None, :]
        state_off = ((b * n_chunks + c) * Dch + d[:, None]) * N + n[None, :]
        raw, dt = _load_dt(delta_ptr + b * s_db, bias_ptr, d, dm, t, tm, s_dd, s_dt, HAS_BIAS, SOFTPLUS)
        u = _load_seq(u_ptr + b * s_ub, d, dm, t, tm, s_ud, s_ut)
        gy = _load_seq(gy_ptr + b * s_gb, d, dm, t, tm, s_gd, s_gt)
        A2 = _load_A2(A_ptr, d, dm, n, nm, N)
        h, x = _chunk_states(A2, dt, u, Bm, keep, tl.load(start_ptr + state_off, mask=m2, other=0.0))
        dC += tl.sum(gy[:, None, :] * h, axis=0)
        G = _adjoint(A2, delta_ptr + b * s_db, bias_ptr, keep_ptr + b * T, d, dm, t, T, (c + 1) * CHUNK,
                     s_dd, s_dt, gy, Cm, tl.load(gend_ptr + state_off, mask=m2, other=0.0), HAS_BIAS, SOFTPLUS)
        ga = G * (h - x)  # dL/d(delta_t A) = G_t a_t h_{t-1}, and a_t h_{t-1} = h_t - x_t
        GB = tl.sum(G * Bm[None, :, :], axis=1)
        dB += tl.sum(G * (dt * u)[:, None, :], axis=0)
        tl.store(dA_ptr + state_off, tl.sum(ga * dt[:, None, :], axis=2), mask=m2)
        d_dt = tl.sum(ga * (A2 / _LOG2E)[:, :, None], axis=1) + GB * u
        du = GB * dt
        if HAS_D:
            du += tl.load(D_ptr + d, mask=dm, other=0.0).to(tl.float32)[:, None] * gy
            tl.store(dD_ptr + (b * n_chunks + c) * Dch + d, tl.sum(gy * u, axis=1), mask=dm)
        if SOFTPLUS:  # softplus' = sigmoid, 1 above F.softplus's threshold
            d_dt = d_dt * tl.where(raw > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-raw)))
        m_dt = dm[:, None] & tm[None, :]
        d_dt = tl.where(m_dt, d_dt, 0.0)  # past T, G carries the last state's gradient: not a token's
        if HAS_BIAS:
            tl.store(dbias_ptr + (b * n_chunks + c) * Dch + d, tl.sum(d_dt, axis=1), mask=dm)
        tl.store(du_ptr + b * s_dub + d[:, None] * s_dud + t[None, :] * s_dut, du, mask=m_dt)
        tl.store(ddelta_ptr + b * s_ddb + d[:, None] * s_ddd + t[None, :] * s_ddt, d_dt, mask=m_dt)
    part = ((b * n_groups + g) * N + n[:, None]) * T + t[None, :]
    tl.store(dB_ptr + part, dB, mask=nm[:, None] & tm[None, :])
    tl.store(dC_ptr + part, dC, mask=nm[:, None] & tm[None, :])


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, new_ptr, y_ptr, Dch, N,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dm = d < Dch
    nm = n < N
    m2 = dm[:, None] & nm[None, :]
    off = (b * Dch + d[:, None]) * N + n[None, :]
    h = tl.load(state_ptr + off, mask=m2, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * Dch + d, mask=dm, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * Dch + d, mask=dm, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d, mask=dm, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # F.softplus with its default threshold
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
    Bt = tl.load(B_ptr + b * N + n, mask=nm, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + b * N + n, mask=nm, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bt[None, :]
    y = tl.sum(h * Ct[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + d, mask=dm, other=0.0).to(tl.float32) * x
    tl.store(new_ptr + off, h, mask=m2)
    tl.store(y_ptr + b * Dch + d, y, mask=dm)


# ------------------------------------------------------------------------------------------------ launches


@dataclass(frozen=True)
class _Scan:
    """One scan call as the kernels read it: inputs in their own dtypes and strides, A as fp32 contiguous, keep
    [B, T] fp32 (0 at a reset)."""

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    bias: torch.Tensor | None
    keep: torch.Tensor
    softplus: bool
    tiling: ScanTiling

    @property
    def dims(self) -> tuple[int, int, int, int]:
        """(batch, channels, time, d_state)."""
        return (*self.u.shape, self.A.shape[1])

    @property
    def n_chunks(self) -> int:
        return max(1, triton.cdiv(self.u.shape[2], self.tiling.chunk))

    @property
    def sizes(self) -> tuple:
        """T, D, N, n_chunks as the kernels take them."""
        Bsz, Dch, T, N = self.dims
        return T, Dch, N, self.n_chunks

    def tile(self, block_d: int, channel_blocks: int) -> tuple:
        """The constexprs every chunk kernel ends with."""
        return (block_d, triton.next_power_of_2(self.dims[3]), self.tiling.chunk, channel_blocks)

    def flags(self) -> tuple:
        return (self.D is not None, self.bias is not None, self.softplus)

    def optional(self, x: torch.Tensor | None) -> torch.Tensor:
        """``x``, or a stand-in for an absent D / delta_bias (never read: its HAS_ flag is False)."""
        return self.keep if x is None else x

    def bwd_groups(self) -> tuple[int, int]:
        """(programs per chunk, channel blocks per program) of the backward kernel."""
        Bsz, Dch, T, N = self.dims
        blocks = triton.cdiv(Dch, self.tiling.bwd_block_d)
        groups = min(blocks, max(1, triton.cdiv(self.tiling.bwd_programs, Bsz * self.n_chunks)))
        per = triton.cdiv(blocks, groups)
        return triton.cdiv(blocks, per), per


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _chunk_grid(s: _Scan) -> tuple[int, int, int]:
    per_program = s.tiling.block_d * s.tiling.channel_blocks
    return triton.cdiv(s.dims[1], per_program), s.n_chunks, s.dims[0]


def _summary_launch(s: _Scan, v, M, out, dsum, grad: bool) -> KernelLaunch:
    """Chunk summaries: forward (v = u, M = B) or backward (``grad``, v = dy, M = C) into ``out``."""
    args = (s.delta, s.optional(s.bias), v, M, s.keep, s.A, out, dsum, *s.sizes,
            *_strides(s.delta), *_strides(v), *_strides(M),
            s.bias is not None, s.softplus, grad, *s.tile(s.tiling.block_d, s.tiling.channel_blocks))
    return KernelLaunch("scan_chunk_summary_" + ("bwd" if grad else "fwd"), "scan " + ("backward" if grad else
                        "forward"), _chunk_summary_kernel, _chunk_grid(s), args, serial_steps=1,
                        options={"num_warps": _WARPS["summary"]})


def _carry_launch(s: _Scan, state, dsum, ckeep, init, final, reverse: bool) -> KernelLaunch:
    """The serial pass over chunks: ``state`` holds summaries in, carries entering each chunk out."""
    Bsz, Dch, T, N = s.dims
    grid = (triton.cdiv(Dch, s.tiling.carry_block_d), Bsz)
    args = (state, dsum, ckeep, s.A, final if init is None else init, final, Dch, N, s.n_chunks,
            init is not None, reverse, s.tiling.carry_block_d, triton.next_power_of_2(N))
    return KernelLaunch("scan_carry_" + ("bwd" if reverse else "fwd"), "scan " + ("backward" if reverse else
                        "forward"), _chunk_carry_kernel, grid, args, serial_steps=s.n_chunks,
                        options={"num_warps": _WARPS["carry"]})


def _output_launch(s: _Scan, starts, y) -> KernelLaunch:
    args = (s.u, s.delta, s.optional(s.bias), s.A, s.B, s.C, s.optional(s.D), s.keep, starts, y, *s.sizes,
            *_strides(s.u), *_strides(s.delta), *_strides(s.B), *_strides(s.C),
            *s.flags(), *s.tile(s.tiling.block_d, s.tiling.channel_blocks))
    return KernelLaunch("scan_output_fwd", "scan forward", _scan_fwd_kernel, _chunk_grid(s), args, serial_steps=1,
                        options={"num_warps": _WARPS["output"]})


@dataclass(frozen=True)
class _Forward:
    """Forward's outputs and the buffers backward keeps: chunk start states [B, n_chunks, D, N], delta sums
    [B, n_chunks, D] and no-reset flags [B, n_chunks] of every chunk."""

    y: torch.Tensor
    last: torch.Tensor
    starts: torch.Tensor
    dsum: torch.Tensor
    ckeep: torch.Tensor

    @classmethod
    def allocate(cls, s: _Scan) -> _Forward:
        Bsz, Dch, T, N = s.dims
        f32 = dict(dtype=torch.float32, device=s.u.device)
        pad = s.n_chunks * s.tiling.chunk - T
        ckeep = F.pad(s.keep, (0, pad), value=1.0).view(Bsz, s.n_chunks, s.tiling.chunk).amin(-1).contiguous()
        return cls(torch.empty(Bsz, Dch, T, dtype=s.u.dtype, device=s.u.device), torch.empty(Bsz, Dch, N, **f32),
                   torch.empty(Bsz, s.n_chunks, Dch, N, **f32), torch.empty(Bsz, s.n_chunks, Dch, **f32), ckeep)


def _forward_launches(s: _Scan, fwd: _Forward, h0: torch.Tensor | None) -> list[KernelLaunch]:
    return [_summary_launch(s, s.u, s.B, fwd.starts, fwd.dsum, grad=False),
            _carry_launch(s, fwd.starts, fwd.dsum, fwd.ckeep, h0, fwd.last, reverse=False),
            _output_launch(s, fwd.starts, fwd.y)]


@dataclass(frozen=True)
class _Backward:
    """Backward's outputs: du, d_delta and dL/dh0 whole; dA, dD, d_delta_bias per (row, chunk) and dB, dC per
    (row, program group) as fp32 partials; ``gends`` the gradient entering each chunk from its end."""

    du: torch.Tensor
    ddelta: torch.Tensor
    dh0: torch.Tensor
    gends: torch.Tensor
    dA: torch.Tensor
    dD: torch.Tensor
    dbias: torch.Tensor
    dB: torch.Tensor
    dC: torch.Tensor

    @classmethod
    def allocate(cls, s: _Scan) -> _Backward:
        Bsz, Dch, T, N = s.dims
        f32 = dict(dtype=torch.float32, device=s.u.device)
        groups, _ = s.bwd_groups()
        per_chunk = [torch.empty(Bsz, s.n_chunks, Dch, **f32) for _ in range(2)]
        partials = [torch.empty(Bsz, groups, N, T, **f32) for _ in range(2)]
        return cls(torch.empty_like(s.u), torch.empty_like(s.delta), torch.empty(Bsz, Dch, N, **f32),
                   torch.empty(Bsz, s.n_chunks, Dch, N, **f32), torch.empty(Bsz, s.n_chunks, Dch, N, **f32),
                   *per_chunk, *partials)


def _backward_launch(s: _Scan, starts, gy, bwd: _Backward) -> KernelLaunch:
    groups, per = s.bwd_groups()
    args = (s.u, s.delta, s.optional(s.bias), s.A, s.B, s.C, s.optional(s.D), s.keep, starts, bwd.gends, gy,
            bwd.du, bwd.ddelta, bwd.dA, bwd.dD, bwd.dbias, bwd.dB, bwd.dC, *s.sizes, groups,
            *_strides(s.u), *_strides(s.delta), *_strides(s.B), *_strides(s.C), *_strides(gy),
            *_strides(bwd.du), *_strides(bwd.ddelta), *s.flags(), *s.tile(s.tiling.bwd_block_d, per))
    return KernelLaunch("scan_bwd", "scan backward", _scan_bwd_kernel, (groups, s.n_chunks, s.dims[0]), args,
                        serial_steps=1, options={"num_warps": _WARPS["backward"]})


def _backward_launches(s: _Scan, fwd: _Forward, gy, g_last, bwd: _Backward) -> list[KernelLaunch]:
    return [_summary_launch(s, gy, s.C, bwd.gends, fwd.dsum, grad=True),
            _carry_launch(s, bwd.gends, fwd.dsum, fwd.ckeep, g_last, bwd.dh0, reverse=True),
            _backward_launch(s, fwd.starts, gy, bwd)]


# ------------------------------------------------------------------------------------------ autograd, API


class SelectiveScanTriton(torch.autograd.Function):
    """u, delta [B, D, T] (delta before bias and softplus), A [D, N], B, C [B, N, T], D, delta_bias [D] or None,
    keep [B, T] fp32 (0 at a reset), h0 [B, D, N] fp32 or None -> y [B, D, T] (u's dtype), last state [B, D, N]
    fp32."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, keep, h0, softplus, tiling):
        s = _Scan(u, delta, A.float().contiguous(), B, C, D, delta_bias, keep, softplus, tiling)
        fwd = _Forward.allocate(s)
        for launch in _forward_launches(s, fwd, h0):
            launch.run()
        ctx.save_for_backward(u, delta, s.A, B, C, D, delta_bias, keep, fwd.starts, fwd.dsum, fwd.ckeep)
        ctx.meta = (softplus, tiling, A.dtype, h0 is not None)
        return fwd.y, fwd.last

    @staticmethod
    def backward(ctx, g_y, g_last):
        u, delta, A32, B, C, D, bias, keep, starts, dsum, ckeep = ctx.saved_tensors
        softplus, tiling, A_dtype, has_h0 = ctx.meta
        s = _Scan(u, delta, A32, B, C, D, bias, keep, softplus, tiling)
        fwd = _Forward(None, None, starts, dsum, ckeep)
        g_y = torch.zeros_like(u) if g_y is None else g_y
        g_last = None if g_last is None else g_last.float().contiguous()
        bwd = _Backward.allocate(s)
        for launch in _backward_launches(s, fwd, g_y, g_last, bwd):
            launch.run()
        gD = None if D is None else bwd.dD.sum((0, 1)).to(D.dtype)
        g_bias = None if bias is None else bwd.dbias.sum((0, 1)).to(bias.dtype)
        return (bwd.du, bwd.ddelta, bwd.dA.sum((0, 1)).to(A_dtype), bwd.dB.sum(1).to(B.dtype),
                bwd.dC.sum(1).to(C.dtype), gD, g_bias, None, bwd.dh0 if has_h0 else None, None, None)


def _keep(resets: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
    if resets is None:
        return torch.ones(u.shape[0], u.shape[2], dtype=torch.float32, device=u.device)
    return (~resets.to(torch.bool)).to(torch.float32).contiguous()


def selective_scan_triton(
    u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, resets=None, initial_state=None,
    return_last_state=False, *, tiling: ScanTiling = ScanTiling(),
):
    """Triton selective scan; contract of ``selective_scan.selective_scan_torch``. ``tiling``: tile sizes (tests
    shrink them to cross chunk and channel-block edges)."""
    check_scan_shapes(u, delta, A, B, C, D, resets, initial_state)
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    y, last = SelectiveScanTriton.apply(u, delta, A, B, C, D, delta_bias, _keep(resets, u), h0,
                                        bool(delta_softplus), tiling)
    return (y, last) if return_last_state else y


def _state_update_launch(state, x, dt, A, B, C, D, dt_bias, softplus, new_state, y, block_d) -> KernelLaunch:
    """All tensors contiguous; absent D / dt_bias are replaced by ``x`` (never read: HAS_D / HAS_BIAS False)."""
    Bsz, Dch, N = state.shape
    args = (state, x, dt, A, B, C, x if D is None else D, x if dt_bias is None else dt_bias, new_state, y, Dch, N,
            D is not None, dt_bias is not None, bool(softplus), block_d, triton.next_power_of_2(N))
    return KernelLaunch("scan_state_update", "scan decode step", _state_update_kernel,
                        (Bsz, triton.cdiv(Dch, block_d)), args, serial_steps=1, options={"num_warps": _WARPS["state"]})


def selective_state_update_triton(state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True,
                                  *, block_d: int = STATE_BLOCK_D):
    """Triton decode step; contract of ``selective_scan.selective_state_update_torch`` (state not modified)."""
    Bsz, Dch, N = state.shape
    state_c = state.contiguous()
    new_state = torch.empty_like(state_c)
    y = torch.empty(Bsz, Dch, dtype=x.dtype, device=x.device)
    optional = [None if v is None else v.contiguous() for v in (D, dt_bias)]
    _state_update_launch(state_c, x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
                         *optional, dt_softplus, new_state, y, block_d).run()
    return y, new_state


def kernel_launches(shape: KernelShape = KernelShape(), tiling: ScanTiling = ScanTiling()) -> list[KernelLaunch]:
    """The scan's forward, backward and decode-step launches at ``shape``, built on ``meta`` tensors (nothing
    runs) with the strides the Mamba layer passes on GPU: u [B, D, T] in the Triton conv's output order, which is
    its input's (a channel-last view of ``in_proj``'s output, see ``triton_conv.kernel_launches``); delta and dy
    [B, T, D] transposed to [B, D, T]; B and C column slices of x_proj's [B, T, dt_rank + 2N] output, transposed;
    D and delta_bias given, softplus on, document resets, no initial state (training)."""
    Bsz, Dch, T, N = shape.batch, shape.d_inner, shape.seqlen, shape.d_state
    meta = dict(dtype=shape.dtype, device="meta")
    f32 = dict(dtype=torch.float32, device="meta")
    dt_rank = math.ceil(Dch / 2 / 16)  # ceil(hidden / 16), hidden = d_inner / mamba_expand (2)
    x_proj = torch.empty(Bsz, T, dt_rank + 2 * N, **meta)
    u = torch.empty(Bsz, T, Dch, **meta).transpose(1, 2)
    delta = torch.empty(Bsz, T, Dch, **meta).transpose(1, 2)
    Bm = x_proj[..., dt_rank:dt_rank + N].transpose(1, 2)
    Cm = x_proj[..., dt_rank + N:].transpose(1, 2)
    keep = torch.empty(Bsz, T, **f32)
    s = _Scan(u, delta, torch.empty(Dch, N, **f32), Bm, Cm, torch.empty(Dch, **f32), torch.empty(Dch, **f32),
              keep, True, tiling)
    fwd = _Forward.allocate(s)
    gy = torch.empty(Bsz, T, Dch, **meta).transpose(1, 2)
    launches = _forward_launches(s, fwd, None) + _backward_launches(s, fwd, gy, None, _Backward.allocate(s))
    state = torch.empty(Bsz, Dch, N, **meta)  # the cache keeps the scan state in the model's dtype
    step = [torch.empty(Bsz, Dch, **meta) for _ in range(2)] + [s.A] + [torch.empty(Bsz, N, **meta) for _ in range(2)]
    launches.append(_state_update_launch(state, *step, s.D, s.bias, True, torch.empty_like(state),
                                         torch.empty(Bsz, Dch, **meta), STATE_BLOCK_D))
    return launches
