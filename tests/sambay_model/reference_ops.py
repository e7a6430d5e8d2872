"""Naive, obviously-correct implementations of the ``sambay_model.ops`` contracts (per-token loops, explicit
softmax): the ground truth of the op tests and the baseline of bench/bench_ops.py. Slow on purpose; test code,
not shipped in the package."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def selective_scan_ref(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, resets=None,
                       initial_state=None, return_last_state=False, dtype=torch.float64):
    """Token-by-token Mamba-1 recurrence, differentiable through autograd, computed in ``dtype``.

    The usual reference shape of the algorithm: decays and inputs precomputed for all tokens, then a Python loop
    over tokens carrying the state.
    """
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bsz, Dch, T = u.shape
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # [B, D, T, N]
    if resets is not None:
        decay = decay * (~resets.to(torch.bool)).to(dtype)[:, None, :, None]
    inp = (delta * u).unsqueeze(-1) * B.transpose(1, 2)[:, None]  # [B, D, T, N]
    h = torch.zeros(Bsz, Dch, A.shape[1], dtype=dtype) if initial_state is None else initial_state.to(dtype)
    ys = []
    # unbind, not indexing: each index's backward would scatter into a full-size zero tensor (O(T^2) traffic).
    for decay_t, inp_t, C_t in zip(decay.unbind(2), inp.unbind(2), C.unbind(2)):
        h = decay_t * h + inp_t
        ys.append((h * C_t[:, None, :]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    return (y, h) if return_last_state else y


def causal_conv1d_ref(x, weight, bias=None, resets=None, initial_state=None, activation="silu"):
    """Each document convolved separately with F.conv1d (the first document continues ``initial_state``)."""
    w = weight.reshape(weight.shape[0], -1)
    Bsz, Dch, T = x.shape
    K = w.shape[-1]
    out = torch.empty_like(x)
    for b in range(Bsz):
        starts = [0] + [t for t in range(1, T) if resets is not None and bool(resets[b, t])]
        bounds = list(zip(starts, starts[1:] + [T]))
        for s, e in bounds:
            seg = x[b : b + 1, :, s:e]
            first_continues = s == 0 and not (resets is not None and bool(resets[b, 0]))
            if first_continues and initial_state is not None:
                prefix = initial_state[b : b + 1]
            else:
                prefix = x.new_zeros(1, Dch, K - 1)
            y = F.conv1d(torch.cat([prefix, seg], -1), w[:, None, :], bias, groups=Dch)
            out[b : b + 1, :, s:e] = F.silu(y) if activation else y
    return out


def attention_ref(q, k, v, *, causal=True, window=None, doc_ids=None, key_padding_mask=None, scale=None):
    """Explicit-softmax attention with a visibility predicate written out per (query, key) pair."""
    Bsz, Hq, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = q.new_zeros(Bsz, Hq, Tq, v.shape[-1])
    for b in range(Bsz):
        for i in range(Tq):
            p = Tk - Tq + i
            visible = []
            for j in range(Tk):
                ok = True
                if causal:
                    ok = j <= p and (window is None or p - j < window)
                if doc_ids is not None:
                    ok = ok and bool(doc_ids[b, j] == doc_ids[b, p])
                if key_padding_mask is not None:
                    ok = ok and bool(key_padding_mask[b, j])
                if ok:
                    visible.append(j)
            if not visible:
                continue
            idx = torch.tensor(visible)
            for h in range(Hq):
                kv = h // group
                scores = (k[b, kv, idx] @ q[b, h, i]) * scale
                probs = torch.softmax(scores, dim=0)
                out[b, h, i] = probs @ v[b, kv, idx]
    return out
