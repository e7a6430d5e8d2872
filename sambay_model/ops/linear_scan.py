"""First-order linear recurrence h_t = e_t * h_{t-1} + x_t over the leading (time) axis, in pure PyTorch.

This is the sequential core of the Mamba-1 selective scan (forward) and of its adjoint (backward). Tensors are
time-major ``[T, ...]`` so that every time slice is one contiguous block.

Method (two-level chunked scan): the sequence is cut into C chunks of L tokens; one pass over the L positions
advances all C chunks at once from a zero carry, a pass over the C chunk ends propagates the true carries,
and one vectorised fix-up adds each chunk's carry times its cumulative decay. Python steps: L + C instead of
T, at the cost of several extra passes over memory. Only products of decays in [0, 1] are formed (never exp of
a positive number, never a division), so it is as stable as the sequential recurrence.

C is chosen so that one step touches about ``TARGET_STEP_ELEMENTS`` values. Measured on 2 CPU cores (forward +
backward, 1 thread, best of 3): the chunked layout costs ~5 extra passes over memory, which only pays when a time
slice is tiny. B*D*N = 64 (T=4096): C=16 is 5x faster than C=1; B*D*N = 1024 (T=2048): C=1 is 2x faster; the
model's shapes (B*D*N >= 32K) are 4-5x faster with C=1, i.e. a plain recurrence with one fused op per token
(Hillis-Steele inside chunks was slower still: log2(L) times the memory traffic).
"""
from __future__ import annotations

import math

import torch

TARGET_STEP_ELEMENTS = 512


def _recurrence(e: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None, reverse: bool = False) -> torch.Tensor:
    """Plain recurrence, one fused multiply-add per step written straight into the output."""
    out = torch.empty_like(x)
    T = x.shape[0]
    order = range(T - 1, -1, -1) if reverse else range(T)
    prev = h0
    for t in order:
        if prev is None:
            out[t].copy_(x[t])
        else:
            torch.addcmul(x[t], e[t], prev, out=out[t])
        prev = out[t]
    return out


def num_chunks(T: int, step_elements: int, on_gpu: bool = False) -> int:
    """Chunks for a length-T scan whose time slice has ``step_elements`` values (see module docstring).

    On a GPU each Python step is a kernel launch and memory traffic is cheap, so the fewest steps (C = sqrt(T))
    win there; the GPU runs this scan when neither Triton nor mamba-ssm can (``backend.cuda_fallback``).
    """
    if on_gpu:
        return max(1, math.isqrt(T))
    want = math.ceil(TARGET_STEP_ELEMENTS / max(1, step_elements))
    return max(1, min(want, math.isqrt(T)))


def linear_scan(
    e: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None = None, chunks: int | None = None, reverse: bool = False
) -> torch.Tensor:
    """Return H with H[t] = e[t] * H[t-1] + x[t] and H[-1] := h0 (zeros when None). Shapes ``[T, ...]``.

    ``reverse=True`` runs backwards in time instead: H[t] = e[t] * H[t+1] + x[t], H[T] := h0.
    Not differentiable by itself (callers wrap it in an autograd.Function); inputs are not modified.
    ``chunks``: number of chunks C (default: ``num_chunks``).
    """
    if e.shape != x.shape:
        raise ValueError(f"linear_scan: e {tuple(e.shape)} and x {tuple(x.shape)} must have the same shape")
    T = x.shape[0]
    rest = x.shape[1:]
    C = chunks if chunks is not None else num_chunks(T, x[0].numel(), x.is_cuda)
    C = max(1, min(C, T))
    if C == 1:
        return _recurrence(e, x, h0, reverse)
    if reverse:
        # The chunked path reorders memory anyway; flipping costs one more copy of each operand.
        return linear_scan(e.flip(0), x.flip(0), h0, C).flip(0)
    L = math.ceil(T / C)
    pad = C * L - T
    if pad:
        # Padding at the end (decay 1, input 0) cannot influence earlier outputs.
        e = torch.cat([e, e.new_ones(pad, *rest)])
        x = torch.cat([x, x.new_zeros(pad, *rest)])
    # [C * L, ...] -> [L, C, ...]: position-in-chunk major, so each step advances every chunk at once.
    e_l = e.view(C, L, *rest).transpose(0, 1).contiguous()
    x_l = x.view(C, L, *rest).transpose(0, 1).contiguous()
    local = _recurrence(e_l, x_l, None)  # chunk states from a zero carry
    decay = torch.cumprod(e_l, dim=0)  # decay from each chunk's start
    ends = _recurrence(decay[-1], local[-1], h0)  # true state at the end of each chunk
    carry = torch.empty_like(ends)
    carry[1:] = ends[:-1]
    if h0 is None:
        carry[0] = 0
    else:
        carry[0] = h0
    out = torch.addcmul(local, decay, carry.unsqueeze(0))
    return out.transpose(0, 1).reshape(C * L, *rest)[:T]


def linear_scan_outer(
    e: torch.Tensor, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, chunks: int | None = None,
    reverse: bool = False, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``linear_scan`` with inputs given as outer products: x[t] = a[t][..., None] * b[t][:, None, :].

    Shapes: e [T, B, D, N], a [T, B, D], b [T, B, N]. On the plain-recurrence path the outer product is formed
    per step, in cache, instead of as one more [T, B, D, N] tensor in memory. ``out``: optional result buffer.
    """
    T = e.shape[0]
    C = chunks if chunks is not None else num_chunks(T, e[0].numel(), e.is_cuda)
    if min(C, T) > 1:
        result = linear_scan(e, a.unsqueeze(-1) * b.unsqueeze(2), h0, C, reverse)
        return result if out is None else out.copy_(result)
    out = torch.empty_like(e) if out is None else out
    prev = h0
    for t in range(T - 1, -1, -1) if reverse else range(T):
        if prev is None:
            torch.mul(a[t].unsqueeze(-1), b[t].unsqueeze(1), out=out[t])
        else:
            torch.mul(e[t], prev, out=out[t])
            out[t].addcmul_(a[t].unsqueeze(-1), b[t].unsqueeze(1))
        prev = out[t]
    return out
