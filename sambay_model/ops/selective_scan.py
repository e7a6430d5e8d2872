"""Mamba-1 (S6) selective scan with document resets, in pure PyTorch, plus the one-token decode step.

Recurrence per batch b, channel d, state n (all math in fp32 whatever the input dtype):

    h_t = exp(delta_t * A) * h_{t-1} * (1 - reset_t) + delta_t * B_t * u_t
    y_t = sum_n C_t,n * h_t,n + D * u_t

``selective_scan`` returns the pre-gate ``y`` (the model multiplies by silu(z) itself, because the GMU memory is
the pre-gate output). The scan is a custom autograd.Function: forward and backward each run ``linear_scan``
(backward runs the adjoint recurrence in reverse time), recomputing the [T, B, D, N] states instead of saving
them, so autograd memory is O(inputs) rather than O(B * D * N * T) per layer, and the autograd graph has one node
instead of several per token. Channels are processed in blocks to bound the size of the work tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .linear_scan import linear_scan_outer

# Upper bound on elements of one [Tchunk, B, Dblock, N] work tensor, so that the official width (d_inner = 5120) at
# long T does not need several GiB per tensor. The bound is met by cutting time into chunks (carrying the state
# across them) before cutting channels: every channel block runs one Python step per token, so blocking channels
# alone made the step count grow with T * (T * D / bound), i.e. quadratically in T.
_MAX_BLOCK_ELEMENTS = 1 << 24
# Shortest time chunk before channels are blocked too: long enough that the per-chunk overhead is amortised,
# short enough that the saved chunk-start states ([T / chunk, B, D, N]) stay a small fraction of the inputs.
_MIN_TIME_CHUNK = 256


def _blocks(T: int, Bsz: int, Dch: int, N: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(channel blocks, time chunks) whose [Tchunk, B, Dblock, N] work tensors hold at most ``_MAX_BLOCK_ELEMENTS``
    (or one time step of one channel, if even that is larger)."""
    per_step = max(1, Bsz * Dch * N)
    t_len = min(T, max(_MIN_TIME_CHUNK, _MAX_BLOCK_ELEMENTS // per_step))
    d_len = max(1, min(Dch, _MAX_BLOCK_ELEMENTS // max(1, t_len * Bsz * N)))
    channels = [(d0, min(Dch, d0 + d_len)) for d0 in range(0, Dch, d_len)]
    times = [(t0, min(T, t0 + t_len)) for t0 in range(0, T, max(1, t_len))]
    return channels, times


def _decays(delta_t: torch.Tensor, A: torch.Tensor, keep_t: torch.Tensor | None) -> torch.Tensor:
    """exp(delta * A) as [T, B, D, N]; zero at reset tokens (keep_t: [T, B, 1, 1] float, 0 at a reset)."""
    e = delta_t.unsqueeze(-1) * A
    e.exp_()
    if keep_t is not None:
        e.mul_(keep_t)
    return e


def _states(u, dl, A, B_t, keep_t, h0, chunks):
    """Scan states H [T, B, Dblk, N] and the decays e used to build them."""
    e = _decays(dl, A, keep_t)
    H = linear_scan_outer(e, dl * u, B_t, h0, chunks)
    return H, e


def _part(x: torch.Tensor | None, t0: int, t1: int) -> torch.Tensor | None:
    return None if x is None else x[t0:t1]


class _SelectiveScan(torch.autograd.Function):
    """Core scan on fp32 time-major inputs: u_t, delta_t [T, B, D]; A [D, N]; B_t, C_t [T, B, N]; h0 [B, D, N].

    Returns y_t [T, B, D] (without the D * u skip) and the last state [B, D, N]. Work is done per (channel block,
    time chunk); the state entering each time chunk is saved (``starts`` [chunks, B, D, N]) so that backward can
    recompute one chunk at a time, walking time in reverse with the adjoint state carried across chunks.
    """

    @staticmethod
    def forward(ctx, u_t, delta_t, A, B_t, C_t, keep_t, h0, chunks):
        T, Bsz, Dch = u_t.shape
        N = A.shape[1]
        channels, times = _blocks(T, Bsz, Dch, N)
        y = torch.empty(T, Bsz, Dch, dtype=u_t.dtype, device=u_t.device)
        starts = torch.empty(len(times), Bsz, Dch, N, dtype=u_t.dtype, device=u_t.device)
        last = torch.empty(Bsz, Dch, N, dtype=u_t.dtype, device=u_t.device)
        for d0, d1 in channels:
            h = h0[:, d0:d1]
            for i, (t0, t1) in enumerate(times):
                starts[i, :, d0:d1] = h
                H, _ = _states(u_t[t0:t1, :, d0:d1], delta_t[t0:t1, :, d0:d1], A[d0:d1], B_t[t0:t1],
                               _part(keep_t, t0, t1), h, chunks)
                # y_t = H_t @ C_t as a batched mat-vec over (t, b).
                y[t0:t1, :, d0:d1] = torch.matmul(H, C_t[t0:t1].unsqueeze(-1)).squeeze(-1)
                h = H[-1].clone()  # a copy, so the chunk's H is freed
            last[:, d0:d1] = h
        ctx.save_for_backward(u_t, delta_t, A, B_t, C_t, keep_t, starts)
        ctx.chunks = chunks
        return y, last

    @staticmethod
    def backward(ctx, g_y, g_last):
        u_t, delta_t, A, B_t, C_t, keep_t, starts = ctx.saved_tensors
        g_y = g_y.contiguous()  # arrives as a permuted view; strided batches make matmul copy per (t, b)
        T, Bsz, Dch = u_t.shape
        channels, times = _blocks(T, Bsz, Dch, A.shape[1])
        grads = {"u": torch.empty_like(u_t), "delta": torch.empty_like(delta_t), "A": torch.zeros_like(A),
                 "B": torch.zeros_like(B_t), "C": torch.zeros_like(C_t), "h0": torch.empty_like(starts[0])}
        for d0, d1 in channels:
            carry = g_last[:, d0:d1]  # dL/dh at the end of the chunk, from everything after it
            for i in range(len(times) - 1, -1, -1):
                carry = _chunk_backward(ctx.chunks, grads, times[i], (d0, d1), carry, u_t, delta_t, A, B_t, C_t,
                                        keep_t, starts[i, :, d0:d1], g_y)
            grads["h0"][:, d0:d1] = carry
        return grads["u"], grads["delta"], grads["A"], grads["B"], grads["C"], None, grads["h0"], None


def _chunk_backward(chunks, grads, time_span, channel_span, carry, u_t, delta_t, A, B_t, C_t, keep_t, h_start, g_y):
    """Backward of one (time chunk, channel block): accumulates into ``grads`` and returns dL/d(state before it)."""
    (t0, t1), (d0, d1) = time_span, channel_span
    u, dl, Ab = u_t[t0:t1, :, d0:d1], delta_t[t0:t1, :, d0:d1], A[d0:d1]
    Bc, Cc, gy = B_t[t0:t1], C_t[t0:t1], g_y[t0:t1, :, d0:d1]
    H, e = _states(u, dl, Ab, Bc, _part(keep_t, t0, t1), h_start, chunks)
    # Adjoint state G_t = dL/dh_t = C_t gy_t + e_{t+1} G_{t+1}, seeded at the chunk end by what comes after it.
    G = torch.empty_like(H)
    torch.addcmul(carry, gy[-1].unsqueeze(-1), Cc[-1].unsqueeze(1), out=G[-1])
    if t1 - t0 > 1:
        linear_scan_outer(e[1:], gy[:-1], Cc[:-1], G[-1], chunks, reverse=True, out=G[:-1])
    before = G[0] * e[0]
    GB = torch.matmul(G, Bc.unsqueeze(-1)).squeeze(-1)  # sum_n G B: [T, B, Dblk]
    grads["B"][t0:t1] += torch.matmul((dl * u).unsqueeze(-2), G).squeeze(-2)
    grads["C"][t0:t1] += torch.matmul(gy.unsqueeze(-2), H).squeeze(-2)
    # Decay gradient, in place over G: dL/da_t = G_t e_t h_{t-1} with e_t = exp(a_t), a_t = delta_t A.
    g_a = G.mul_(e)
    del e
    g_a[1:] *= H[:-1]
    g_a[0] *= h_start
    del H
    grads["delta"][t0:t1, :, d0:d1] = (g_a * Ab).sum(-1) + GB * u
    grads["u"][t0:t1, :, d0:d1] = GB * dl
    grads["A"][d0:d1] += (g_a * dl.unsqueeze(-1)).sum((0, 1))
    return before


def check_scan_shapes(u, delta, A, B, C, D, resets, initial_state) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be [batch, channels, time], got shape {tuple(u.shape)}")
    Bsz, Dch, T = u.shape
    N = A.shape[-1]
    expected = {
        "delta": (delta, (Bsz, Dch, T)),
        "A": (A, (Dch, N)),
        "B": (B, (Bsz, N, T)),
        "C": (C, (Bsz, N, T)),
    }
    if D is not None:
        expected["D"] = (D, (Dch,))
    if resets is not None:
        expected["resets"] = (resets, (Bsz, T))
    if initial_state is not None:
        expected["initial_state"] = (initial_state, (Bsz, Dch, N))
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(t.shape)}")


def effective_delta(delta, delta_bias, delta_softplus):
    """softplus(delta + delta_bias) in fp32, [B, D, T] (each part optional)."""
    dl = delta.to(torch.float32)
    if delta_bias is not None:
        dl = dl + delta_bias.to(torch.float32).unsqueeze(-1)
    return F.softplus(dl) if delta_softplus else dl


def selective_scan_torch(
    u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, resets=None, initial_state=None,
    return_last_state=False, chunks: int | None = None,
):
    """Pure-PyTorch Mamba-1 selective scan returning the pre-gate output y (including D * u) [and the last state].

    Shapes: u, delta [B, D, T]; A [D, N] (negative, A = -exp(A_log)); B, C [B, N, T]; D, delta_bias [D];
    resets [B, T] bool, True where a new document starts (the carried state, including ``initial_state``, is
    zeroed before that token); initial_state [B, D, N]. y has u's dtype; the last state [B, D, N] is fp32.
    This is the contract of ``dispatch.selective_scan`` and of every kernel adapter.
    """
    check_scan_shapes(u, delta, A, B, C, D, resets, initial_state)
    Bsz, Dch, T = u.shape
    N = A.shape[-1]
    f32 = torch.float32
    dl = effective_delta(delta, delta_bias, delta_softplus)
    # Time-major fp32 copies: every time slice of the scan is then one contiguous block.
    u_t = u.to(f32).permute(2, 0, 1).contiguous()
    delta_t = dl.permute(2, 0, 1).contiguous()
    B_t = B.to(f32).permute(2, 0, 1).contiguous()
    C_t = C.to(f32).permute(2, 0, 1).contiguous()
    keep_t = None
    if resets is not None:
        keep_t = (~resets.to(torch.bool)).to(f32).t().reshape(T, Bsz, 1, 1).contiguous()
    if initial_state is None:
        h0 = torch.zeros(Bsz, Dch, N, dtype=f32, device=u.device)
    else:
        h0 = initial_state.to(f32)
    y_t, last = _SelectiveScan.apply(u_t, delta_t, A.to(f32), B_t, C_t, keep_t, h0, chunks)
    y = y_t.permute(1, 2, 0)
    if D is not None:
        y = y + D.to(f32).unsqueeze(-1) * u.to(f32)
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def selective_state_update_torch(state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True):
    """One recurrent step for decoding: returns (y [B, D], new_state [B, D, N]); ``state`` is not modified.

    Shapes: state [B, D, N]; x, dt [B, D]; A [D, N]; B, C [B, N]; D, dt_bias [D]. Math in fp32; y has x's
    dtype and new_state has state's dtype. Consistent with ``selective_scan_torch`` run token by token.
    """
    f32 = torch.float32
    dt = dt.to(f32)
    if dt_bias is not None:
        dt = dt + dt_bias.to(f32)
    if dt_softplus:
        dt = F.softplus(dt)
    xf = x.to(f32)
    decay = torch.exp(dt.unsqueeze(-1) * A.to(f32))  # [B, D, N]
    new_state = decay * state.to(f32) + (dt * xf).unsqueeze(-1) * B.to(f32).unsqueeze(1)
    y = torch.matmul(new_state, C.to(f32).unsqueeze(-1)).squeeze(-1)
    if D is not None:
        y = y + D.to(f32) * xf
    return y.to(x.dtype), new_state.to(state.dtype)
