"""Which compute backend runs an op: pure PyTorch ("torch"), the Triton kernels ("triton") or the CUDA kernel
packages ("cuda").

The CUDA kernels come from three optional packages (the ``gpu`` extra): mamba-ssm, causal-conv1d and
flash-attn. Each is probed once per process; a package that is missing *or broken* (they fail at import in
many ways: missing ``*_cuda`` extension, ABI mismatch with torch, no GPU driver) simply counts as absent.
Triton ships with every CUDA build of PyTorch; on CPU its kernels run only under Triton's interpreter
(``TRITON_INTERPRET=1`` set before Python imports triton), which is how the tests run them.

With "cuda" the packages run only the calls they compute exactly (``cuda_kernels``' predicates); packed or
padded batches (document resets in the scan) go to ``cuda_fallback()``: the Triton kernels, else PyTorch.

Layering of ``sambay_model.ops`` (imports go one way, top to bottom): ``linear_scan`` / ``backend`` <-
``selective_scan`` / ``conv`` / ``attention`` (pure PyTorch) <- kernel adapters ``cuda_kernels`` / ``triton_scan``
/ ``triton_conv`` / ``triton_attention`` <- ``dispatch`` (the public ops; picks an adapter through this module)
<- the package ``__init__`` (``tests/sambay_model/test_ops_layering.py`` checks it).
"""
from __future__ import annotations

import functools
import importlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch

BACKENDS = ("auto", "torch", "cuda", "triton")


@dataclass(frozen=True)
class KernelProbe:
    """Callables found in the optional CUDA packages; a field is None when its import failed.

    Defaults: every field None (no kernel package importable).
    """

    selective_scan_fn: Any = None  # mamba_ssm.ops.selective_scan_interface.selective_scan_fn
    selective_state_update: Any = None  # mamba_ssm.ops.triton.selective_state_update.selective_state_update
    causal_conv1d_fn: Any = None  # causal_conv1d.causal_conv1d_fn
    causal_conv1d_update: Any = None  # causal_conv1d.causal_conv1d_update
    flash_attn_func: Any = None  # flash_attn.flash_attn_func
    flash_attn_varlen_func: Any = None  # flash_attn.flash_attn_varlen_func
    errors: tuple[str, ...] = ()  # one "module.attr: error" line per failed import, for error messages

    @property
    def complete(self) -> bool:
        """True when every kernel needed by the cuda backend imported."""
        return all(
            f is not None
            for f in (
                self.selective_scan_fn,
                self.selective_state_update,
                self.causal_conv1d_fn,
                self.causal_conv1d_update,
                self.flash_attn_func,
                self.flash_attn_varlen_func,
            )
        )


_KERNELS = {
    "selective_scan_fn": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "selective_state_update": ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update"),
    "causal_conv1d_fn": ("causal_conv1d", "causal_conv1d_fn"),
    "causal_conv1d_update": ("causal_conv1d", "causal_conv1d_update"),
    "flash_attn_func": ("flash_attn", "flash_attn_func"),
    "flash_attn_varlen_func": ("flash_attn", "flash_attn_varlen_func"),
}


def _import_attr(module: str, attr: str) -> Any:
    return getattr(importlib.import_module(module), attr)


@functools.lru_cache(maxsize=1)
def probe_kernels() -> KernelProbe:
    """Import each optional kernel once (cached for the process) and report what is usable."""
    found: dict[str, Any] = {}
    errors: list[str] = []
    for field, (module, attr) in _KERNELS.items():
        try:
            found[field] = _import_attr(module, attr)
        except Exception as exc:  # noqa: BLE001 - these packages fail at import in many ways, not only ImportError
            errors.append(f"{module}.{attr}: {type(exc).__name__}: {exc}")
    return KernelProbe(**found, errors=tuple(errors))


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    """True when the ``triton`` package imports (cached for the process)."""
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001 - a broken install fails in many ways, not only ImportError
        return False
    return True


def triton_interpreted() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return triton_importable() and bool(importlib.import_module("triton").knobs.runtime.interpret)


def resolve_backend(requested: str, device: torch.device | str | None) -> str:
    """Map a requested backend ("auto" | "torch" | "cuda" | "triton") and a tensor device to the one that runs.

    "auto" picks "triton" for CUDA tensors when Triton imports, else "cuda" when all CUDA kernels import, else
    "torch"; "torch" always means pure PyTorch; "cuda" raises when the kernels are missing or the tensors are
    not on a GPU; "triton" raises when Triton is missing, or the tensors are on CPU without the interpreter.
    """
    if requested not in BACKENDS:
        raise ValueError(f"compute_backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "torch":
        return "torch"
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if requested == "auto":
        if not on_cuda:
            return "torch"
        if triton_importable():
            return "triton"
        return "cuda" if probe_kernels().complete else "torch"
    if requested == "triton":
        return _check_triton(on_cuda, device)
    probe = probe_kernels()
    if not probe.complete:
        detail = "\n  ".join(probe.errors) or "unknown import failure"
        raise RuntimeError(
            "compute_backend='cuda' needs mamba-ssm, causal-conv1d and flash-attn (pip install "
            "--no-build-isolation -e .[gpu] on a CUDA machine); these imports failed:\n  " + detail
        )
    if not on_cuda:
        raise RuntimeError(f"compute_backend='cuda' needs tensors on a CUDA device, got device {device}")
    return "cuda"


def cuda_fallback() -> str:
    """Where the "cuda" backend sends a call its packages cannot compute exactly (a scan with document resets or
    an initial state, a conv with both, fp32 attention): the Triton kernels when Triton imports, else pure
    PyTorch, whose scan on a GPU is the time-chunked one (``linear_scan.num_chunks``), never one step per token."""
    if triton_importable():
        return "triton"
    warnings.warn("compute_backend='cuda': the CUDA packages cannot run this call exactly (document resets, "
                  "an initial state or fp32) and triton does not import; using the PyTorch op (slower)",
                  stacklevel=3)
    return "torch"


def _check_triton(on_cuda: bool, device) -> str:
    if not triton_importable():
        raise RuntimeError("compute_backend='triton' needs the triton package (CUDA builds of torch ship it; "
                           "else pip install triton)")
    if not on_cuda and not triton_interpreted():
        raise RuntimeError(f"compute_backend='triton' needs tensors on a CUDA device, got device {device} "
                           "(on CPU the kernels run only under Triton's interpreter, TRITON_INTERPRET=1)")
    return "triton"
