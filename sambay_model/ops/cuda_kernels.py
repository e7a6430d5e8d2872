"""Adapters from the ops' contracts to the CUDA kernel packages (mamba-ssm, causal-conv1d, flash-attn).

Only reached when ``backend.resolve_backend`` chose "cuda", and only for calls a package kernel runs exactly;
``dispatch`` asks the ``*_is_exact`` predicates below and sends every other call to ``backend.cuda_fallback()``
(the Triton kernels, else PyTorch):

- selective scan with an initial state or a document reset after the first token (``selective_scan_fn`` has
  neither; resets inside a row would need the cu_seqlens fork of mamba-ssm): every packed or padded batch;
- causal conv with both resets and an initial state (``causal_conv1d_fn`` takes ``seq_idx`` or
  ``initial_states``, not both);
- attention in fp32 or with head dims flash-attn does not support.

Documents go to flash-attn's varlen kernel (padding is a document of its own, see ``attention``), resets to
causal-conv1d's ``seq_idx``. The index/layout helpers (``resets_to_seq_idx``, ``plan_varlen``,
``split_value_heads``, ``flash_window``, ``to_flash_layout``) are plain PyTorch so CPU tests can check them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import check_attention_args
from .backend import probe_kernels
from .conv import weight_2d

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

    The flattened [B*Tq] queries are already grouped by segment, in order; k_index: the positions in the
    flattened [B*Tk] keys that go into the packed keys (sorted, so segments are contiguous), leaving out documents
    with no query (all before the last Tq positions). cu_seqlens_*: int32 segment offsets.
    """

    k_index: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int


def plan_varlen(doc_ids: torch.Tensor, Tq: int) -> VarlenPlan:
    """Build the varlen layout for queries = the last Tq of Tk positions, keys = every position of their document.

    Causal masking inside a segment is then flash-attn's bottom-right alignment: a document's queries are a
    suffix of its tokens.
    """
    Bsz, Tk = doc_ids.shape
    starts = torch.ones(Bsz, Tk, dtype=torch.bool, device=doc_ids.device)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    seg = (torch.cumsum(starts.flatten(), 0) - 1).view(Bsz, Tk)  # global segment id per token
    nseg = int(seg[-1, -1].item()) + 1
    q_seg = seg[:, Tk - Tq :].flatten()
    n_q = torch.bincount(q_seg, minlength=nseg)
    n_k = torch.bincount(seg.flatten(), minlength=nseg)
    active = n_q > 0
    k_keep = active[seg].flatten()
    n_q, n_k = n_q[active], n_k[active]
    zero = torch.zeros(1, dtype=torch.int32, device=doc_ids.device)
    return VarlenPlan(
        k_index=torch.nonzero(k_keep).flatten(),
        cu_seqlens_q=torch.cat([zero, torch.cumsum(n_q, 0).to(torch.int32)]),
        cu_seqlens_k=torch.cat([zero, torch.cumsum(n_k, 0).to(torch.int32)]),
        max_seqlen_q=int(n_q.max().item()),
        max_seqlen_k=int(n_k.max().item()),
    )


# ------------------------------------------------------------------------------------------ selective scan


def scan_is_exact(resets: torch.Tensor | None, initial_state: torch.Tensor | None) -> bool:
    """True when mamba-ssm's ``selective_scan_fn`` computes the call: no initial state, no reset after token 0."""
    return initial_state is None and (resets is None or not bool(resets[:, 1:].any()))


def selective_scan_cuda(u, delta, A, B, C, D, delta_bias, delta_softplus, resets, initial_state, return_last_state):
    """mamba-ssm ``selective_scan_fn``, for calls where ``scan_is_exact``."""
    if not scan_is_exact(resets, initial_state):
        raise ValueError("selective_scan_cuda: mamba-ssm has no initial state or document resets "
                         "(dispatch sends such calls to backend.cuda_fallback())")
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


def conv_is_exact(resets: torch.Tensor | None, initial_state: torch.Tensor | None) -> bool:
    """True when ``causal_conv1d_fn`` computes the call: it takes ``seq_idx`` or ``initial_states``, not both."""
    return resets is None or initial_state is None


def causal_conv1d_cuda(x, weight, bias, resets, initial_state, activation):
    """causal-conv1d's ``causal_conv1d_fn``, for calls where ``conv_is_exact``."""
    if not conv_is_exact(resets, initial_state):
        raise ValueError("causal_conv1d_cuda: causal_conv1d_fn takes resets or an initial state, not both "
                         "(dispatch sends such calls to backend.cuda_fallback())")
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


def attention_is_exact(q: torch.Tensor, v: torch.Tensor) -> bool:
    """True when flash-attn computes the call: fp16/bf16, head dim a multiple of 8 up to 256, V heads a multiple
    of it (``split_value_heads``)."""
    d = q.shape[-1]
    return q.dtype in (torch.float16, torch.bfloat16) and d % 8 == 0 and d <= 256 and v.shape[-1] % d == 0


def attention_flash(q, k, v, *, causal, window, doc_ids, scale):
    """flash-attn for [B, H, T, d] inputs (documents through the varlen kernel), for calls where
    ``attention_is_exact``."""
    check_attention_args(q, k, v, window, doc_ids, causal)
    if not attention_is_exact(q, v):
        raise ValueError(f"attention_flash: flash-attn cannot run {q.dtype} q with head dim {q.shape[-1]} and "
                         f"value head dim {v.shape[-1]} (dispatch sends such calls to backend.cuda_fallback())")
    probe = probe_kernels()
    d = q.shape[-1]
    qf, kf = to_flash_layout(q), to_flash_layout(k)
    v_parts = [to_flash_layout(p) for p in split_value_heads(v, d)]
    window_size = flash_window(window)
    if doc_ids is None:
        outs = [
            probe.flash_attn_func(qf, kf, vp, softmax_scale=scale, causal=causal, window_size=window_size)
            for vp in v_parts
        ]
        return torch.cat(outs, dim=-1).transpose(1, 2)
    Bsz, Hq, Tq, _ = q.shape
    Tk = k.shape[2]
    plan = plan_varlen(doc_ids, Tq)
    q_packed = qf.reshape(Bsz * Tq, Hq, d)
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
    return torch.cat(outs, dim=-1).view(Bsz, Tq, Hq, -1).transpose(1, 2)
