"""Depthwise causal 1-D convolution (the Mamba input conv) with document resets, plus its decode step.

State conventions (Hugging Face, docs/architecture.md §9.1): the decode ``conv_state`` holds the last K raw (pre-conv)
inputs ``[B, D, K]``; the prefill ``initial_state`` holds the last K-1 raw inputs ``[B, D, K-1]``, i.e.
``conv_state[..., 1:]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "silu", "swish")


def weight_2d(weight: torch.Tensor) -> torch.Tensor:
    """Accept the checkpoint shape [D, 1, K] or [D, K]; return [D, K]."""
    if weight.dim() == 3:
        if weight.shape[1] != 1:
            raise ValueError(f"causal_conv1d: depthwise weight must be [D, 1, K], got {tuple(weight.shape)}")
        return weight[:, 0]
    if weight.dim() != 2:
        raise ValueError(f"causal_conv1d: weight must be [D, 1, K] or [D, K], got {tuple(weight.shape)}")
    return weight


def activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {ACTIVATIONS}, got {activation!r}")
    return F.silu(y) if activation is not None else y


def check_conv_args(x, weight, resets, initial_state, activation) -> torch.Tensor:
    """Validate ``causal_conv1d`` arguments (clear errors naming the argument); returns the [D, K] weight."""
    w = weight_2d(weight)
    Bsz, Dch, T = x.shape
    K = w.shape[-1]
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if w.shape[0] != Dch:
        raise ValueError(f"causal_conv1d: weight has {w.shape[0]} channels, x has {Dch}")
    if initial_state is not None and tuple(initial_state.shape) != (Bsz, Dch, K - 1):
        raise ValueError(
            f"causal_conv1d: initial_state must be [B, D, K-1] = {(Bsz, Dch, K - 1)}, got {tuple(initial_state.shape)}"
        )
    if resets is not None and tuple(resets.shape) != (Bsz, T):
        raise ValueError(f"causal_conv1d: resets must be [B, T] = {(Bsz, T)}, got {tuple(resets.shape)}")
    return w


def positions_in_document(resets: torch.Tensor) -> torch.Tensor:
    """[B, T] offset of each token from its document start. A row's first document, if it does not start with
    a reset, continues from before the sequence: its tokens get huge offsets (they may see earlier state)."""
    Bsz, T = resets.shape
    idx = torch.arange(T, device=resets.device).expand(Bsz, T)
    starts = torch.where(resets.to(torch.bool), idx, torch.full_like(idx, -(1 << 40)))
    last_start = torch.cummax(starts, dim=1).values
    return idx - last_start


def causal_conv1d_torch(x, weight, bias=None, resets=None, initial_state=None, activation="silu"):
    """Depthwise causal conv over x [B, D, T] with weight [D, 1, K] or [D, K] and bias [D] (or None).

    resets [B, T] bool (True = a document starts here): no tap crosses a reset, so a document's first token
    sees only itself. initial_state [B, D, K-1] = the raw inputs just before x (ignored after a reset).
    activation: "silu" (default) or None. Pure PyTorch; the contract of ``dispatch.causal_conv1d``.
    """
    w = check_conv_args(x, weight, resets, initial_state, activation)
    Bsz, Dch, T = x.shape
    K = w.shape[-1]
    prefix = initial_state.to(x.dtype) if initial_state is not None else x.new_zeros(Bsz, Dch, K - 1)
    xp = torch.cat([prefix, x], dim=-1)
    if resets is None:
        y = F.conv1d(xp, w.unsqueeze(1).to(x.dtype), bias, groups=Dch)
    else:
        # Tap j (looking j tokens back) is live only if no document starts in (t - j, t]; K is tiny (4), so a
        # loop over taps is cheaper than building per-document convolutions.
        pos = positions_in_document(resets).unsqueeze(1)  # [B, 1, T]
        y = xp[..., K - 1 :] * w[:, K - 1 : K]
        for j in range(1, K):
            tap = xp[..., K - 1 - j : K - 1 - j + T] * w[:, K - 1 - j : K - j]
            y = y + tap * (pos >= j)
        if bias is not None:
            y = y + bias.unsqueeze(-1)
    return activate(y, activation)


def conv_state_after(x, kernel_size: int, resets=None, initial_state=None):
    """Decode conv state [B, D, K] after prefilling x [B, D, T]: the last K raw inputs, oldest first.

    Slots before the sequence come from ``initial_state`` [B, D, K-1] (zeros when None); slots before the
    last document start of a row are zeroed, matching ``causal_conv1d``'s reset rule.
    """
    K = kernel_size
    Bsz, Dch, T = x.shape
    prefix = x.new_zeros(Bsz, Dch, K)
    if initial_state is not None:
        prefix[..., 1:] = initial_state.to(x.dtype)
    state = torch.cat([prefix, x], dim=-1)[..., -K:]
    if resets is not None:
        # Slot i holds time T - K + i; it survives only if the row's last document started at or before it.
        pos_last = positions_in_document(resets)[:, -1:]  # [B, 1]
        age = torch.arange(K - 1, -1, -1, device=x.device)  # slot i is K-1-i tokens before the last token
        state = state * (age <= pos_last).unsqueeze(1).to(x.dtype)
    return state.contiguous()


def causal_conv1d_update_torch(x_t, conv_state, weight, bias=None, activation="silu"):
    """One decode step: x_t [B, D], conv_state [B, D, K] (last K raw inputs) -> (y_t [B, D], new_state).

    ``conv_state`` is not modified; new_state drops the oldest input and appends x_t.
    """
    w = weight_2d(weight)
    new_state = torch.cat([conv_state[..., 1:], x_t.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
    acc = torch.promote_types(x_t.dtype, torch.float32)  # accumulate in at least fp32
    y = (new_state.to(acc) * w.to(acc)).sum(-1)
    if bias is not None:
        y = y + bias.to(acc)
    return activate(y, activation).to(x_t.dtype), new_state
