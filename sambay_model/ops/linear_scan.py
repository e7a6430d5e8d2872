"""First-order linear recurrence h_t = e_t * h_{t-1} + x_t over the leading (time) axis, in pure PyTorch.

This is the sequential core of the Mamba-1 selective scan (forward) and of its adjoint (backward). Tensors are
time-major ``[T, ...]`` so that every time slice is one contiguous block.

Method: a Python loop over chunks of ``chunk`` tokens; inside a chunk a Hillis-Steele scan composes the affine
maps (e, x) in log2(chunk) vectorised steps, then the carried state enters through the chunk's cumulative
decay. Only products of decays in [0, 1] are formed (never exp of a positive number, never a division), so the
scan is as stable as the sequential recurrence whatever the decay magnitudes.
"""
from __future__ import annotations

import torch

DEFAULT_CHUNK = 32  # tokens per chunk; measured fastest on 2 CPU cores for [T, 4, 512, 16] (bench/bench_ops.py)


def linear_scan(e: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Return H with H[t] = e[t] * H[t-1] + x[t], H[-1] := h0 (zeros when None). Shapes ``[T, ...]``.

    Not differentiable by itself (callers wrap it in an autograd.Function). ``e`` is left untouched.
    """
    if e.shape != x.shape:
        raise ValueError(f"linear_scan: e {tuple(e.shape)} and x {tuple(x.shape)} must have the same shape")
    T = x.shape[0]
    out = torch.empty_like(x)
    h = h0 if h0 is not None else torch.zeros_like(x[0])
    # Two ping-pong buffers per operand: a Hillis-Steele step reads the previous step's values at t and t-k.
    xa, xb = torch.empty_like(x[:chunk]), torch.empty_like(x[:chunk])
    ea, eb = torch.empty_like(e[:chunk]), torch.empty_like(e[:chunk])
    for c0 in range(0, T, chunk):
        n = min(chunk, T - c0)
        xs, xd = xa[:n], xb[:n]
        es, ed = ea[:n], eb[:n]
        xs.copy_(x[c0 : c0 + n])
        es.copy_(e[c0 : c0 + n])
        k = 1
        while k < n:
            xd[:k].copy_(xs[:k])
            torch.addcmul(xs[k:], es[k:], xs[:-k], out=xd[k:])
            ed[:k].copy_(es[:k])
            torch.mul(es[k:], es[:-k], out=ed[k:])
            xs, xd = xd, xs
            es, ed = ed, es
            k *= 2
        # xs[t] = state at t from a zero carry; es[t] = product of decays since the chunk start.
        torch.addcmul(xs, es, h.unsqueeze(0), out=out[c0 : c0 + n])
        h = out[c0 + n - 1]
    return out
