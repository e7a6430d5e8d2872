"""The public ops: each takes a keyword-only ``backend`` (the model's ``compute_backend``) and sends the call to
the pure-PyTorch implementation or a kernel adapter, as ``backend.resolve_backend`` decides.

With "cuda", a call the CUDA packages cannot compute exactly (``cuda_kernels``' ``*_is_exact``: document resets
or an initial state in the scan, resets with an initial state in the conv, fp32 attention) goes to
``backend.cuda_fallback()``, so packed and padded training batches run the Triton kernels (or, without Triton, the
time-chunked PyTorch scan), and mamba-ssm's scan runs the reset-free ones.

Contracts (shapes, dtypes, reset and state rules) are those of the pure-PyTorch functions named in each
docstring; every adapter implements the same contract. The Triton adapters are imported on first use, not at
the top: triton is an optional package (CUDA builds of torch ship it; a CPU install has it only through the dev
extra), and a CPU run that never selects the triton backend should not need it.
"""
from __future__ import annotations

import importlib

from . import cuda_kernels
from .attention import MaskCache, attention_torch
from .backend import cuda_fallback, resolve_backend
from .conv import causal_conv1d_torch, causal_conv1d_update_torch
from .selective_scan import selective_scan_torch, selective_state_update_torch


def _triton(module: str):
    return importlib.import_module(f"{__package__}.triton_{module}")


def selective_scan(
    u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, resets=None, initial_state=None,
    return_last_state=False, *, backend: str = "auto",
):
    """Mamba-1 selective scan; contract of ``selective_scan.selective_scan_torch``."""
    args = (u, delta, A, B, C, D, delta_bias, delta_softplus, resets, initial_state, return_last_state)
    chosen = resolve_backend(backend, u.device)
    if chosen == "cuda" and not cuda_kernels.scan_is_exact(resets, initial_state):
        chosen = cuda_fallback()
    if chosen == "triton":
        return _triton("scan").selective_scan_triton(*args)
    if chosen == "cuda":
        return cuda_kernels.selective_scan_cuda(*args)
    return selective_scan_torch(*args)


def selective_state_update(state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True, *, backend: str = "auto"):
    """One decode step of the scan; contract of ``selective_scan.selective_state_update_torch``."""
    args = (state, x, dt, A, B, C, D, dt_bias, dt_softplus)
    chosen = resolve_backend(backend, x.device)
    if chosen == "triton":
        return _triton("scan").selective_state_update_triton(*args)
    if chosen == "cuda":
        return cuda_kernels.selective_state_update_cuda(*args)
    return selective_state_update_torch(*args)


def causal_conv1d(x, weight, bias=None, resets=None, initial_state=None, activation="silu", *, backend: str = "auto"):
    """Depthwise causal conv with resets; contract of ``conv.causal_conv1d_torch``."""
    args = (x, weight, bias, resets, initial_state, activation)
    chosen = resolve_backend(backend, x.device)
    if chosen == "cuda" and not cuda_kernels.conv_is_exact(resets, initial_state):
        chosen = cuda_fallback()
    if chosen == "triton":
        return _triton("conv").causal_conv1d_triton(*args)
    if chosen == "cuda":
        return cuda_kernels.causal_conv1d_cuda(*args)
    return causal_conv1d_torch(*args)


def causal_conv1d_update(x_t, conv_state, weight, bias=None, activation="silu", *, backend: str = "auto"):
    """One decode step of the conv; contract of ``conv.causal_conv1d_update_torch``.

    The triton backend uses the PyTorch step: it is a [B, D, K] shift and dot product, a few fused element-wise
    ops with no time loop, so a kernel would not save launches worth measuring.
    """
    if resolve_backend(backend, x_t.device) == "cuda":
        return cuda_kernels.causal_conv1d_update_cuda(x_t, conv_state, weight, bias, activation)
    return causal_conv1d_update_torch(x_t, conv_state, weight, bias, activation)


def attention(q, k, v, *, causal=True, window=None, doc_ids=None, scale=None, backend: str = "auto",
              masks: MaskCache | None = None):
    """Attention with GQA and causal / window / document masks; contract of ``attention.attention_torch``. The
    cuda backend (flash-attn, its varlen kernel for documents) takes fp16/bf16; the triton backend uses
    FlexAttention for masked calls, building each block mask once per ``masks`` (the forward's ``MaskCache``;
    None: once per call). The other backends build their masks per call."""
    kwargs = dict(causal=causal, window=window, doc_ids=doc_ids, scale=scale)
    chosen = resolve_backend(backend, q.device)
    if chosen == "cuda" and not cuda_kernels.attention_is_exact(q, v):
        chosen = cuda_fallback()
    if chosen == "triton":
        return _triton("attention").attention_flex(q, k, v, **kwargs, masks=masks)
    if chosen == "cuda":
        return cuda_kernels.attention_flash(q, k, v, **kwargs)
    return attention_torch(q, k, v, **kwargs)
