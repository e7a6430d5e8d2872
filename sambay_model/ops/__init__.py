"""Compute kernels of the SambaY model: pure-PyTorch implementations, Triton kernels and CUDA-package adapters.

Every op takes a keyword-only ``backend`` ("auto" | "torch" | "cuda" | "triton", the model's
``compute_backend``); ``dispatch`` routes the call (module layering: see ``backend``'s docstring).
"""
from .attention import MaskCache
from .backend import probe_kernels, resolve_backend
from .conv import conv_state_after
from .dispatch import attention, causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update

__all__ = [
    "MaskCache",
    "attention",
    "causal_conv1d",
    "causal_conv1d_update",
    "conv_state_after",
    "probe_kernels",
    "resolve_backend",
    "selective_scan",
    "selective_state_update",
]
