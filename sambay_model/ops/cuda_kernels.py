"""Adapters from the ops' contracts to the CUDA kernel packages (mamba-ssm, causal-conv1d, flash-attn).

Only reached when ``backend.resolve_backend`` chose "cuda". Cases a kernel cannot express exactly fall back to
the pure-PyTorch implementation (with a warning where it costs speed):

- selective scan with an initial state or a document reset after the first token (``selective_scan_fn`` has
  neither; resets inside a row would need the cu_seqlens fork of mamba-ssm);
- causal conv with both resets and an initial state (``causal_conv1d_fn`` takes ``seq_idx`` or
  ``initial_states``, not both);
- attention in fp32, with head dims flash-attn does not support, or with padding that is not left padding
  inside its document (the varlen layout below relies on it).

The index/layout helpers (``resets_to_seq_idx``, ``plan_varlen``, ``split_value_heads``, ``flash_window``,
``to_flash_layout``) are plain PyTorch so CPU tests can check them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .attention import attention_torch, check_attention_args
from .backend import probe_kernels
from .conv import causal_conv1d_torch, weight_2d
from .selective_scan import selective_scan_torch

# ----------------------------------------------------------------------------------------------- helpers


def resets_to_seq_idx(resets: torch.Tensor) -> torch.Tensor:
    """[B, T] bool document starts -> int32 ``seq_idx`` for causal_conv1d (equal ids = same document)."""
    return torch.cumsum(resets.to(torch.int32), dim=1, dtype=torch.int32)


def flash_window(window: int | None) -> tuple[int, int]:
    """Our window (query sees itself + w-1 previous keys) as flash-attn's (left, right) ``window_size``."""
    return (-1, -1) if window is None else (window - 1, 0)


def to_flash_layout(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, d] -> [B, T, H, d] (flash-attn's layout), contiguous."""
    return x.transpose(1, 2).contiguous()


def split_value_heads(v: torch.Tensor, head_dim: int) -> list[torch.Tensor]:
    """flash-attn needs V's head dim equal to Q/K's: split V [..., dv] into dv / head_dim slices of width head_dim."""
    if v.shape[-1] % head_dim != 0:
        raise ValueError(f"value head dim {v.shape[-1]} is not a multiple of the query head dim {head_dim}")
    return list(torch.split(v, head_dim, dim=-1))


@dataclass(frozen=True)
class VarlenPlan:
    """Packed-sequence layout for ``flash_attn_varlen_func``: one segment per (row, document) with queries.

    q_index / k_index: positions in the flattened [B*Tq] query / [B*Tk] key tokens that go into the packed
    tensors (sorted, so segments are contiguous). cu_seqlens_*: int32 segment offsets. Queries of documents with
    no real key are left out (their output is zero).
    """

    q_index: torch.Tensor
    k_index: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int


def padding_is_leading(doc_ids: torch.Tensor | None, key_padding_mask: torch.Tensor) -> bool:
    """True when, inside every document of every row, padded keys all come before real keys (left padding).

    Only then does dropping padded keys keep flash-attn's bottom-right causal alignment exact.
    """
    real = key_padding_mask.to(torch.bool)
    same_doc = torch.ones_like(real[:, 1:]) if doc_ids is None else doc_ids[:, 1:] == doc_ids[:, :-1]
    bad = real[:, :-1] & ~real[:, 1:] & same_doc
    return not bool(bad.any())


def plan_varlen(doc_ids: torch.Tensor | None, key_padding_mask: torch.Tensor | None, Tq: int) -> VarlenPlan:
    """Build the varlen layout for queries = the last Tq of Tk positions, keys = real tokens.

    Causal masking inside a segment is then flash-attn's bottom-right alignment: a document's queries are a
    suffix of its tokens, and with left padding the dropped keys all precede the kept ones.
    """
    ref = doc_ids if doc_ids is not None else key_padding_mask
    if ref is None:
        raise ValueError("plan_varlen needs doc_ids or key_padding_mask")
    Bsz, Tk = ref.shape
    device = ref.device
    if doc_ids is None:
        starts = torch.zeros(Bsz, Tk, dtype=torch.bool, device=device)
    else:
        starts = torch.zeros(Bsz, Tk, dtype=torch.bool, device=device)
        starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    starts[:, 0] = True
    seg = (torch.cumsum(starts.flatten(), 0) - 1).view(Bsz, Tk)  # global segment id per token
    nseg = int(seg[-1, -1].item()) + 1
    if key_padding_mask is None:
        real = torch.ones(Bsz, Tk, dtype=torch.bool, device=device)
    else:
        real = key_padding_mask.to(torch.bool)
    q_seg = seg[:, Tk - Tq :].flatten()
    n_q = torch.bincount(q_seg, minlength=nseg)
    n_k = torch.bincount(seg[real], minlength=nseg)
    active = (n_q > 0) & (n_k > 0)
    q_keep = active[q_seg]
    k_keep = (real & active[seg]).flatten()
    n_q, n_k = n_q[active], n_k[active]
    zero = torch.zeros(1, dtype=torch.int32, device=device)
    return VarlenPlan(
        q_index=torch.nonzero(q_keep).flatten(),
        k_index=torch.nonzero(k_keep).flatten(),
        cu_seqlens_q=torch.cat([zero, torch.cumsum(n_q, 0).to(torch.int32)]),
        cu_seqlens_k=torch.cat([zero, torch.cumsum(n_k, 0).to(torch.int32)]),
        max_seqlen_q=int(n_q.max().item()) if n_q.numel() else 0,
        max_seqlen_k=int(n_k.max().item()) if n_k.numel() else 0,
    )


# ------------------------------------------------------------------------------------------ selective scan


def selective_scan_cuda(u, delta, A, B, C, D, delta_bias, delta_softplus, resets, initial_state, return_last_state):
    """mamba-ssm ``selective_scan_fn`` when it is exact, else the PyTorch scan (see module docstring)."""
    inner_reset = resets is not None and bool(resets[:, 1:].any())
    if initial_state is not None or inner_reset:
        warnings.warn(
            "selective_scan: mamba-ssm's kernel has no initial state or document resets; using the PyTorch scan "
            "for this call (slower). Pack one document per row to keep the CUDA kernel.",
            stacklevel=3,
        )
        return selective_scan_torch(
            u, delta, A, B, C, D, delta_bias, delta_softplus, resets, initial_state, return_last_state
        )
    # The kernel wants delta and the input-dependent B, C in u's dtype; A, D and delta_bias in fp32.
    out = probe_kernels().selective_scan_fn(
        u.contiguous(),
        delta.to(u.dtype).contiguous(),
        A.float().contiguous(),
        B.to(u.dtype).contiguous(),
        C.to(u.dtype).contiguous(),
        None if D is None else D.float(),
        None,
        None if delta_bias is None else delta_bias.float(),
        delta_softplus,
        return_last_state,
    )
    if return_last_state:
        y, last = out
        return y.to(u.dtype), last.float()
    return out.to(u.dtype)


def selective_state_update_cuda(state, x, dt, A, B, C, D, dt_bias, dt_softplus):
    """mamba-ssm's Triton decode step; it updates the state in place, so it runs on a copy."""
    new_state = state.clone()
    y = probe_kernels().selective_state_update(
        new_state, x, dt, A.float(), B, C, D=None if D is None else D.float(), z=None,
        dt_bias=None if dt_bias is None else dt_bias.float(), dt_softplus=dt_softplus,
    )
    return y.to(x.dtype), new_state


# -------------------------------------------------------------------------------------------------- conv


def _channel_last(x: torch.Tensor) -> torch.Tensor:
    """Same [B, D, T] view, memory laid out [B, T, D]: causal_conv1d's seq_idx / initial_states need it."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def causal_conv1d_cuda(x, weight, bias, resets, initial_state, activation):
    if resets is not None and initial_state is not None:
        return causal_conv1d_torch(x, weight, bias, resets, initial_state, activation)
    w = weight_2d(weight).contiguous()
    fn = probe_kernels().causal_conv1d_fn
    if resets is not None:
        return fn(_channel_last(x), w, bias, seq_idx=resets_to_seq_idx(resets), activation=activation)
    if initial_state is not None:
        init = _channel_last(initial_state.to(x.dtype))
        return fn(_channel_last(x), w, bias, initial_states=init, activation=activation)
    return fn(x.contiguous(), w, bias, activation=activation)


def causal_conv1d_update_cuda(x_t, conv_state, weight, bias, activation):
    """causal-conv1d's decode step; it shifts the state in place, so it runs on a copy."""
    new_state = conv_state.to(dtype=x_t.dtype, copy=True)  # the kernel wants the state in x's dtype
    y = probe_kernels().causal_conv1d_update(x_t, new_state, weight_2d(weight).contiguous(), bias, activation)
    return y, new_state


# --------------------------------------------------------------------------------------------- attention


def flash_dtype(q: torch.Tensor) -> bool:
    """flash-attn computes in fp16/bf16 only."""
    return q.dtype in (torch.float16, torch.bfloat16)


def flash_supported(q: torch.Tensor, v: torch.Tensor) -> bool:
    d = q.shape[-1]
    return flash_dtype(q) and d % 8 == 0 and d <= 256 and v.shape[-1] % d == 0


def attention_flash(q, k, v, *, causal, window, doc_ids, key_padding_mask, scale):
    """flash-attn for [B, H, T, d] inputs; falls back to SDPA where flash cannot be exact."""
    check_attention_args(q, k, v, window, doc_ids, key_padding_mask, causal)
    kwargs = dict(causal=causal, window=window, doc_ids=doc_ids, key_padding_mask=key_padding_mask, scale=scale)
    if not flash_supported(q, v):
        return attention_torch(q, k, v, **kwargs)
    if key_padding_mask is not None and not padding_is_leading(doc_ids, key_padding_mask):
        warnings.warn("attention: padding is not left padding; using SDPA instead of flash-attn", stacklevel=3)
        return attention_torch(q, k, v, **kwargs)
    probe = probe_kernels()
    d = q.shape[-1]
    qf, kf = to_flash_layout(q), to_flash_layout(k)
    v_parts = [to_flash_layout(p) for p in split_value_heads(v, d)]
    window_size = flash_window(window)
    if doc_ids is None and key_padding_mask is None:
        outs = [
            probe.flash_attn_func(qf, kf, vp, softmax_scale=scale, causal=causal, window_size=window_size)
            for vp in v_parts
        ]
        return torch.cat(outs, dim=-1).transpose(1, 2)
    Bsz, Hq, Tq, _ = q.shape
    Tk = k.shape[2]
    plan = plan_varlen(doc_ids, key_padding_mask, Tq)
    q_packed = qf.reshape(Bsz * Tq, Hq, d).index_select(0, plan.q_index)
    k_packed = kf.reshape(Bsz * Tk, -1, d).index_select(0, plan.k_index)
    outs = []
    for vp in v_parts:
        v_packed = vp.reshape(Bsz * Tk, -1, d).index_select(0, plan.k_index)
        outs.append(
            probe.flash_attn_varlen_func(
                q_packed, k_packed, v_packed, plan.cu_seqlens_q, plan.cu_seqlens_k, plan.max_seqlen_q,
                plan.max_seqlen_k, softmax_scale=scale, causal=causal, window_size=window_size,
            )
        )
    packed = torch.cat(outs, dim=-1)
    out = packed.new_zeros(Bsz * Tq, Hq, packed.shape[-1]).index_copy(0, plan.q_index, packed)
    return out.view(Bsz, Tq, Hq, -1).transpose(1, 2)
