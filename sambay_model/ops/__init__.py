"""Compute kernels of the SambaY model: pure-PyTorch implementations with automatic CUDA-kernel dispatch.

Every op takes a keyword-only ``backend`` ("auto" | "torch" | "cuda", the model's ``compute_backend``).
"""
from .attention import attention
from .backend import probe_kernels, resolve_backend
from .conv import causal_conv1d, causal_conv1d_update, conv_state_after
from .selective_scan import selective_scan, selective_state_update

__all__ = [
    "attention",
    "causal_conv1d",
    "causal_conv1d_update",
    "conv_state_after",
    "probe_kernels",
    "resolve_backend",
    "selective_scan",
    "selective_state_update",
]
