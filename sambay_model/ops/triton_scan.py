"""Triton kernels for the Mamba-1 selective scan with per-token document resets (forward and backward) and for
its one-token decode step.

mamba-ssm's Mamba-1 kernel has no document reset, initial state or per-token reset, so packed rows could not use
it; these kernels implement exactly ``selective_scan.selective_scan_torch``'s recurrence. Each program owns one
(batch row, block of ``block_d`` channels) and keeps its [block_d, N] state in fp32 registers while it loops
over time inside the kernel: one launch per call, never one per token. Inputs may be bf16 or fp32 in any
strides (the model passes transposed views); state and accumulation are fp32.

Backward runs the adjoint recurrence G_t = C_t gy_t + exp(delta_{t+1} A) (1 - reset_{t+1}) G_{t+1} in reverse
time inside a kernel. It needs each h_{t-1}, which forward does not keep (that would be N fp32 values per
input element); forward saves only the state at the start of every ``chunk`` tokens, and backward recomputes
each chunk's states into a small per-program scratch buffer (L2-resident) before walking the chunk backwards.
Softplus / delta_bias and the D * u skip are left to autograd around the kernel (element-wise, cheap).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .selective_scan import check_scan_shapes, effective_delta

BLOCK_D = 32  # channels per program: enough programs to fill a GPU at training widths (B * d_inner / 32)
CHUNK = 64  # tokens between saved states: saved states are N / CHUNK fp32 values per input element


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, keep_ptr, h0_ptr, y_ptr, last_ptr, chk_ptr,
    T, Dch, N, n_chunks,
    s_ub, s_ud, s_ut, s_db, s_dd, s_dt, s_bb, s_bn, s_bt, s_cb, s_cn, s_ct,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dm = d < Dch
    nm = n < N
    m2 = dm[:, None] & nm[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
    # Row pointers hoisted out of the time loop: a step then costs one multiply-add per operand.
    u_row, dt_row = u_ptr + b * s_ub + d * s_ud, dt_ptr + b * s_db + d * s_dd
    B_row, C_row = B_ptr + b * s_bb + n * s_bn, C_ptr + b * s_cb + n * s_cn
    keep_row, y_row = keep_ptr + b * T + 0 * d, y_ptr + (b * Dch + d) * T
    state_off = (b * Dch + d[:, None]) * N + n[None, :]
    chk_off = (b * Dch + d[:, None]) * n_chunks * N + n[None, :]
    h = tl.load(h0_ptr + state_off, mask=m2, other=0.0)
    for c in range(n_chunks):
        tl.store(chk_ptr + chk_off + c * N, h, mask=m2)  # state before token c * CHUNK
        for t in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, T)):
            u = tl.load(u_row + t * s_ut, mask=dm, other=0.0).to(tl.float32)
            dt = tl.load(dt_row + t * s_dt, mask=dm, other=0.0).to(tl.float32)
            Bt = tl.load(B_row + t * s_bt, mask=nm, other=0.0).to(tl.float32)
            Ct = tl.load(C_row + t * s_ct, mask=nm, other=0.0).to(tl.float32)
            keep = tl.load(keep_row + t, mask=dm, other=1.0)[:, None]  # a vector: masks must be tensors
            h = tl.exp(dt[:, None] * A) * keep * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(y_row + t, tl.sum(h * Ct[None, :], axis=1), mask=dm)
    tl.store(last_ptr + state_off, h, mask=m2)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, keep_ptr, chk_ptr, gy_ptr, glast_ptr, scr_ptr,
    gu_ptr, gdt_ptr, gA_ptr, gB_ptr, gC_ptr, gh0_ptr,
    T, Dch, N, n_chunks,
    s_ub, s_ud, s_ut, s_db, s_dd, s_dt, s_bb, s_bn, s_bt, s_cb, s_cn, s_ct,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pd = tl.program_id(1)
    d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dm = d < Dch
    nm = n < N
    m2 = dm[:, None] & nm[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
    u_row, dt_row = u_ptr + b * s_ub + d * s_ud, dt_ptr + b * s_db + d * s_dd
    B_row, C_row = B_ptr + b * s_bb + n * s_bn, C_ptr + b * s_cb + n * s_cn
    keep_row, seq_row = keep_ptr + b * T + 0 * d, (b * Dch + d) * T  # seq_row: offsets into [B, D, T] buffers
    part_row = ((b * tl.num_programs(1) + pd) * N + n) * T  # this program's [N, T] partial sums of dB, dC
    state_off = (b * Dch + d[:, None]) * N + n[None, :]
    chk_off = (b * Dch + d[:, None]) * n_chunks * N + n[None, :]
    # Per-program scratch [CHUNK, BLOCK_D, BLOCK_N]: the recomputed states of the current chunk.
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]
    scr = scr_ptr + (b * tl.num_programs(1) + pd) * (CHUNK * BLOCK_D * BLOCK_N) + tile
    G = tl.load(glast_ptr + state_off, mask=m2, other=0.0)  # dL/dh after the last token
    a_next = tl.full((BLOCK_D, BLOCK_N), 1.0, tl.float32)  # decay of the token after the current one
    gA = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    for c_rev in range(n_chunks):
        t0 = (n_chunks - 1 - c_rev) * CHUNK
        t1 = tl.minimum(t0 + CHUNK, T)
        h_start = tl.load(chk_ptr + chk_off + (t0 // CHUNK) * N, mask=m2, other=0.0)
        h = h_start
        for t in range(t0, t1):
            u = tl.load(u_row + t * s_ut, mask=dm, other=0.0).to(tl.float32)
            dt = tl.load(dt_row + t * s_dt, mask=dm, other=0.0).to(tl.float32)
            Bt = tl.load(B_row + t * s_bt, mask=nm, other=0.0).to(tl.float32)
            keep = tl.load(keep_row + t, mask=dm, other=1.0)[:, None]
            h = tl.exp(dt[:, None] * A) * keep * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(scr + (t - t0) * BLOCK_D * BLOCK_N, h)
        tl.debug_barrier()  # the scratch written above is read below
        for j in range(0, t1 - t0):
            t = t1 - 1 - j
            u = tl.load(u_row + t * s_ut, mask=dm, other=0.0).to(tl.float32)
            dt = tl.load(dt_row + t * s_dt, mask=dm, other=0.0).to(tl.float32)
            Bt = tl.load(B_row + t * s_bt, mask=nm, other=0.0).to(tl.float32)
            Ct = tl.load(C_row + t * s_ct, mask=nm, other=0.0).to(tl.float32)
            keep = tl.load(keep_row + t, mask=dm, other=1.0)[:, None]
            gy = tl.load(gy_ptr + seq_row + t, mask=dm, other=0.0)
            h_t = tl.load(scr + (t - t0) * BLOCK_D * BLOCK_N)
            inner = (t - t0 + 0 * tile) > 0  # h_{t-1} is in the scratch, else it is the chunk's start state
            h_prev = tl.where(inner, tl.load(scr + (t - t0 - 1) * BLOCK_D * BLOCK_N, mask=inner, other=0.0), h_start)
            a = tl.exp(dt[:, None] * A) * keep
            G = gy[:, None] * Ct[None, :] + a_next * G  # dL/dh_t
            ga = G * h_prev * a  # dL/d(delta_t A): h_t = a_t h_{t-1} + ..., a_t = exp(delta_t A) * keep_t
            GB = tl.sum(G * Bt[None, :], axis=1)
            tl.store(gdt_ptr + seq_row + t, tl.sum(ga * A, axis=1) + GB * u, mask=dm)
            tl.store(gu_ptr + seq_row + t, GB * dt, mask=dm)
            gA += ga * dt[:, None]
            tl.store(gB_ptr + part_row + t, tl.sum(G * (dt * u)[:, None], axis=0), mask=nm)
            tl.store(gC_ptr + part_row + t, tl.sum(gy[:, None] * h_t, axis=0), mask=nm)
            a_next = a
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(gh0_ptr + state_off, a_next * G, mask=m2)
    tl.store(gA_ptr + state_off, gA, mask=m2)


def _strides3(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _geometry(Bsz: int, Dch: int, T: int, N: int, block_d: int, chunk: int):
    n_chunks = max(1, triton.cdiv(T, chunk))
    return (Bsz, triton.cdiv(Dch, block_d)), n_chunks, triton.next_power_of_2(N)


class SelectiveScanTriton(torch.autograd.Function):
    """Scan core: u, delta [B, D, T] (delta after softplus), A [D, N], B, C [B, N, T], keep [B, T] fp32
    (0 at a reset), h0 [B, D, N] fp32 -> y [B, D, T] fp32 (without D * u), last state [B, D, N] fp32."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, keep, h0, block_d, chunk):
        Bsz, Dch, T = u.shape
        N = A.shape[1]
        grid, n_chunks, block_n = _geometry(Bsz, Dch, T, N, block_d, chunk)
        A32 = A.float().contiguous()
        y = torch.empty(Bsz, Dch, T, dtype=torch.float32, device=u.device)
        last = torch.empty(Bsz, Dch, N, dtype=torch.float32, device=u.device)
        chk = torch.empty(Bsz, Dch, n_chunks, N, dtype=torch.float32, device=u.device)
        _scan_fwd_kernel[grid](
            u, delta, A32, B, C, keep, h0, y, last, chk, T, Dch, N, n_chunks,
            *_strides3(u), *_strides3(delta), *_strides3(B), *_strides3(C),
            BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk,
        )
        ctx.save_for_backward(u, delta, A32, B, C, keep, chk)
        ctx.geometry = (block_d, chunk, A.dtype)
        return y, last

    @staticmethod
    def backward(ctx, g_y, g_last):
        u, delta, A32, B, C, keep, chk = ctx.saved_tensors
        block_d, chunk, A_dtype = ctx.geometry
        Bsz, Dch, T = u.shape
        N = A32.shape[1]
        grid, n_chunks, block_n = _geometry(Bsz, Dch, T, N, block_d, chunk)
        f32 = dict(dtype=torch.float32, device=u.device)
        g_y = torch.zeros(Bsz, Dch, T, **f32) if g_y is None else g_y.float().contiguous()
        g_last = torch.zeros(Bsz, Dch, N, **f32) if g_last is None else g_last.float().contiguous()
        scratch = torch.empty(Bsz * grid[1] * chunk * block_d * block_n, **f32)
        g_u, g_delta = torch.empty(Bsz, Dch, T, **f32), torch.empty(Bsz, Dch, T, **f32)
        g_A, g_h0 = torch.empty(Bsz, Dch, N, **f32), torch.empty(Bsz, Dch, N, **f32)
        g_B, g_C = torch.empty(Bsz, grid[1], N, T, **f32), torch.empty(Bsz, grid[1], N, T, **f32)
        _scan_bwd_kernel[grid](
            u, delta, A32, B, C, keep, chk, g_y, g_last, scratch, g_u, g_delta, g_A, g_B, g_C, g_h0,
            T, Dch, N, n_chunks,
            *_strides3(u), *_strides3(delta), *_strides3(B), *_strides3(C),
            BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk,
        )
        # dB, dC were summed per channel block (deterministic, no atomics); dA per batch row.
        return (g_u.to(u.dtype), g_delta.to(delta.dtype), g_A.sum(0).to(A_dtype), g_B.sum(1).to(B.dtype),
                g_C.sum(1).to(C.dtype), None, g_h0, None, None)


def selective_scan_triton(
    u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, resets=None, initial_state=None,
    return_last_state=False, *, block_d: int = BLOCK_D, chunk: int = CHUNK,
):
    """Triton selective scan; contract of ``selective_scan.selective_scan_torch``. ``block_d`` / ``chunk``:
    channels per program and tokens between saved states (tests shrink them to cross block edges)."""
    check_scan_shapes(u, delta, A, B, C, D, resets, initial_state)
    Bsz, Dch, T = u.shape
    N = A.shape[-1]
    dl = effective_delta(delta, delta_bias, delta_softplus)
    keep = torch.ones(Bsz, T, dtype=torch.float32, device=u.device)
    if resets is not None:
        keep = (~resets.to(torch.bool)).to(torch.float32).contiguous()
    if initial_state is None:
        h0 = torch.zeros(Bsz, Dch, N, dtype=torch.float32, device=u.device)
    else:
        h0 = initial_state.to(torch.float32).contiguous()
    y, last = SelectiveScanTriton.apply(u, dl, A, B, C, keep, h0, block_d, chunk)
    if D is not None:
        y = y + D.to(torch.float32).unsqueeze(-1) * u.to(torch.float32)
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


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


def selective_state_update_triton(state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True,
                                  *, block_d: int = BLOCK_D):
    """Triton decode step; contract of ``selective_scan.selective_state_update_torch`` (state not modified)."""
    Bsz, Dch, N = state.shape
    state_c, x_c, dt_c = state.contiguous(), x.contiguous(), dt.contiguous()
    new_state = torch.empty_like(state_c)
    y = torch.empty(Bsz, Dch, dtype=x.dtype, device=x.device)
    dummy = x_c  # stands in for an absent D / dt_bias (never read: HAS_D / HAS_BIAS are False)
    _state_update_kernel[(Bsz, triton.cdiv(Dch, block_d))](
        state_c, x_c, dt_c, A.contiguous(), B.contiguous(), C.contiguous(),
        dummy if D is None else D.contiguous(), dummy if dt_bias is None else dt_bias.contiguous(),
        new_state, y, Dch, N,
        HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(N),
    )
    return y, new_state
