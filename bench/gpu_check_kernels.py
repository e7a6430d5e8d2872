"""The kernel-level parts of bench/gpu_check.py (issue 20 item 7), the cheap ones that run first: Triton kernels
against the PyTorch reference at the real widths, the selective scan's forward and backward bandwidth against the
copy bandwidth, and FlexAttention against the reference. Only the public ops (``sambay_model.ops``) are called,
with ``backend="triton"`` and ``backend="torch"``.

Every function takes ``(sz, work, limit_s)`` and returns a JSON-able dict (``{"skipped": why}`` when it cannot run).
On CPU (``--dry-run``) they run under Triton's interpreter at toy widths: the driver sets ``TRITON_INTERPRET=1``
in their process before anything imports triton.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.attention.flex_attention as torch_flex
import torch.nn.functional as F

from bench.gpu_check_probe import compile_figures
from bench.gpu_check_sizes import Sizes
from sambay_model import ops
from sambay_model.ops.backend import triton_interpreted

# Norm-wise relative error bounds of triton against the PyTorch reference on the same inputs. Both compute in fp32
# (different summation orders): fp32 results agree to ~1e-5 over thousands of steps, 2e-3 leaves room for TF32 dots.
# bf16 outputs and gradients are rounded to bf16 (relative step 2^-8) in places that differ: 10x that.
TOLERANCE = {torch.float32: 2e-3, torch.bfloat16: 4e-2}
# Flex against fp32 attention: at most this many times the PyTorch bf16 path's own error, plus a floor.
FLEX_SLACK, FLEX_FLOOR = 2.0, 1e-3
NEEDS_TRITON = "on CPU the triton backend needs TRITON_INTERPRET=1 (the driver sets it)"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of ``repeats`` later calls), synchronised around each call.
    The first includes Triton's JIT compile of every specialisation the call reaches."""
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def copy_bandwidth(sz: Sizes) -> float:
    """Bytes read plus written per second of a large device-to-device copy (random data)."""
    x = torch.randn(sz.copy_mib * 2**18, device=sz.device)  # copy_mib MiB of fp32
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / timed(lambda: y.copy_(x), sz.device, 10)[1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))


def reset_mask(bsz: int, t: int, device: str) -> torch.Tensor:
    """Document starts at the first and last token, at both sides of the 64- and 128-token chunk edges, and two
    in a row: the places where a chunked scan carries or drops its state."""
    resets = torch.zeros(bsz, t, dtype=torch.bool, device=device)
    for pos in (0, 63, 64, 127, 128, t // 2, t // 2 + 1, t - 1):
        resets[:, min(pos, t - 1)] = True
    return resets


def _grads(fn, inputs: dict) -> dict:
    """Outputs of ``fn(**inputs)`` and the gradient of <first output, w> with respect to every float input, ``w``
    random with a fixed seed (the same for every backend)."""
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) if isinstance(v, torch.Tensor) else v
              for k, v in inputs.items()}
    out = fn(**leaves)
    y, extra = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
    weight = torch.randn(y.shape, device=y.device, generator=torch.Generator(y.device).manual_seed(1))
    wrt = {k: v for k, v in leaves.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    grads = torch.autograd.grad((y.float() * weight).sum(), list(wrt.values()), allow_unused=True)
    return {"y": y.detach(), **{f"extra{i}": e.detach() for i, e in enumerate(extra)},
            **{f"d_{k}": g for k, g in zip(wrt, grads) if g is not None}}


def compare(fn, inputs: dict, dtype: torch.dtype, device: str) -> dict:
    """triton against torch on the same inputs: relative error of every output and gradient, the first call's
    and a later call's seconds of the triton run."""
    ref = _grads(lambda **kw: fn(**kw, backend="torch"), inputs)
    seconds, got = [], None
    for _ in range(2):  # the first call includes the JIT compile of the specialisations it reaches
        _sync(device)
        start = time.perf_counter()
        got = _grads(lambda **kw: fn(**kw, backend="triton"), inputs)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    first, later = seconds
    errors = {k: rel(got[k], ref[k]) for k in ref}
    missing = sorted(set(ref) - set(got))
    worst = max(errors, key=errors.get)
    return {"errors": {k: float(f"{v:.3g}") for k, v in errors.items()}, "worst": worst,
            "ok": not missing and errors[worst] <= TOLERANCE[dtype], "missing_grads": missing,
            "first_call_s": round(first, 3), "later_call_s": round(later, 4)}


def scan_inputs(shape: tuple[int, int, int, int], dev: str, dtype: torch.dtype, full: bool) -> dict:
    """Scan arguments at ``shape`` (batch, d_inner, T, d_state); ``full``: resets, an initial state, the returned
    last state, a delta bias and the D skip, as the model calls it."""
    bsz, d, t, n = shape
    out = {"u": torch.randn(bsz, d, t, device=dev, dtype=dtype), "delta": torch.randn(bsz, d, t, device=dev,
           dtype=dtype) - 1.0, "A": -torch.rand(d, n, device=dev) - 0.5,
           "B": torch.randn(bsz, n, t, device=dev, dtype=dtype), "C": torch.randn(bsz, n, t, device=dev, dtype=dtype),
           "delta_softplus": True}
    if full:
        out.update(D=torch.randn(d, device=dev), delta_bias=torch.randn(d, device=dev) * 0.1,
                   resets=reset_mask(bsz, t, dev), initial_state=torch.randn(bsz, d, n, device=dev),
                   return_last_state=True)
    return out


def conv_inputs(sz: Sizes, dtype: torch.dtype, full: bool) -> dict:
    bsz, d, t, _ = sz.kernel_shape
    dev = sz.device
    out = {"x": torch.randn(bsz, d, t, device=dev, dtype=dtype),
           "weight": torch.randn(d, sz.conv_kernel, device=dev, dtype=dtype) * 0.5,
           "bias": torch.randn(d, device=dev, dtype=dtype), "activation": "silu"}
    if full:
        out.update(resets=reset_mask(bsz, t, dev),
                   initial_state=torch.randn(bsz, d, sz.conv_kernel - 1, device=dev, dtype=dtype))
    return out


def kernels(sz: Sizes, work: Path, limit_s: float) -> dict:
    """Scan and conv, forward and every gradient, fp32 and bf16, with and without resets and an initial state."""
    if sz.device != "cuda" and not triton_interpreted():
        return {"skipped": NEEDS_TRITON}
    torch.manual_seed(0)
    cases = {}
    for dtype in (torch.float32, torch.bfloat16):
        for full in (False, True):
            tag = f"{str(dtype).removeprefix('torch.')}_{'resets_initial_state' if full else 'plain'}"
            scan = scan_inputs(sz.kernel_shape, sz.device, dtype, full)
            cases[f"scan_{tag}"] = compare(ops.selective_scan, scan, dtype, sz.device)
            cases[f"conv_{tag}"] = compare(ops.causal_conv1d, conv_inputs(sz, dtype, full), dtype, sz.device)
    failed = sorted(k for k, c in cases.items() if not c["ok"])
    return {"shape_b_d_t_n": list(sz.kernel_shape), "conv_kernel": sz.conv_kernel,
            "tolerance": {str(k): v for k, v in TOLERANCE.items()}, "cases": cases, "all_ok": not failed,
            "failed": failed, "triton_first_calls_s": round(sum(c["first_call_s"] for c in cases.values()), 2)}


def scan_bytes(bsz: int, d: int, t: int, n: int, backward: bool) -> int:
    """The fewest bytes a bf16 scan moves. Forward: read u, delta, B, C and the resets, write y. Backward adds: read
    them and dy again, write du, ddelta, dB, dC (A, D and the bias are negligible)."""
    fwd = 2 * (3 * bsz * d * t + 2 * bsz * n * t) + bsz * t
    bwd = 2 * (3 * bsz * d * t + 2 * bsz * n * t) + bsz * t + 2 * (2 * bsz * d * t + 2 * bsz * n * t)
    return fwd + (bwd if backward else 0)


def scan_bandwidth(sz: Sizes, work: Path, limit_s: float) -> dict:
    """The triton selective scan on bf16 inputs with resets: forward, and forward + backward, bytes / time."""
    if sz.device != "cuda" and not triton_interpreted():
        return {"skipped": NEEDS_TRITON}
    bsz, d, t, n = sz.scan_shape
    inputs = scan_inputs(sz.scan_shape, sz.device, torch.bfloat16, full=True)
    inputs.update(initial_state=None, return_last_state=False, resets=torch.rand(bsz, t, device=sz.device) < 1e-3)
    leaves = {k: v.requires_grad_() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in inputs.items()}
    wrt = [v for v in leaves.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    dy = torch.randn(bsz, d, t, device=sz.device, dtype=torch.bfloat16)
    fwd = lambda: ops.selective_scan(**leaves, backend="triton")  # noqa: E731
    both = lambda: torch.autograd.grad(fwd(), wrt, dy)  # noqa: E731 - no .grad accumulation inside the timing
    repeats = 5 if sz.device == "cuda" else 1
    first_fwd, s_fwd = timed(lambda: torch.no_grad()(fwd)(), sz.device, repeats)
    first_both, s_both = timed(both, sz.device, repeats)
    copy = copy_bandwidth(sz)
    out = {"shape_b_d_t_n": list(sz.scan_shape), "backend": "triton", "copy_gb_s": round(copy / 1e9, 1),
           "first_call_s": {"forward": round(first_fwd, 3), "forward_backward": round(first_both, 3)}}
    for name, seconds, backward in (("forward", s_fwd, False), ("forward_backward", s_both, True)):
        nbytes = scan_bytes(bsz, d, t, n, backward)
        out[name] = {"ms": round(1e3 * seconds, 3), "bytes_moved": nbytes,
                     "achieved_gb_s": float(f"{nbytes / seconds / 1e9:.4g}"),
                     "fraction_of_copy": float(f"{nbytes / seconds / copy:.4g}")}
    return out


def _attention_case(sz: Sizes, window: int | None, docs: torch.Tensor, qkv: tuple) -> dict:
    """flex (bf16) and torch (bf16) against torch in fp32 on the same bf16 inputs: output and dq, dk, dv."""
    def run(backend: str, dtype: torch.dtype) -> dict:
        q, k, v = (x.detach().to(dtype).requires_grad_() for x in qkv)
        out = ops.attention(q, k, v, causal=True, window=window, doc_ids=docs, backend=backend)
        out.float().backward(weight)
        return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}

    weight = torch.randn(qkv[0].shape, device=sz.device)
    ref = run("torch", torch.float32)
    _sync(sz.device)
    start = time.perf_counter()
    run("triton", torch.bfloat16)  # the first call: FlexAttention's compile of this mask's forward and backward
    _sync(sz.device)
    first = time.perf_counter() - start
    flex, torch16 = run("triton", torch.bfloat16), run("torch", torch.bfloat16)
    err = {k: rel(flex[k], ref[k]) for k in ref}
    base = {k: rel(torch16[k], ref[k]) for k in ref}
    ok = all(err[k] <= FLEX_SLACK * base[k] + FLEX_FLOOR for k in ref)
    return {"window": window, "flex_bf16_vs_fp32": {k: float(f"{v:.3g}") for k, v in err.items()},
            "torch_bf16_vs_fp32": {k: float(f"{v:.3g}") for k, v in base.items()}, "ok": ok,
            "first_call_s": round(first, 3)}


def flex(sz: Sizes, work: Path, limit_s: float) -> dict:
    """FlexAttention (``backend="triton"``) in bf16 at the model's head widths on packed rows: the sliding-window
    layers' mask and the full-attention layer's, forward and dq, dk, dv, against fp32 PyTorch attention."""
    if sz.device != "cuda":
        if not triton_interpreted():
            return {"skipped": NEEDS_TRITON}
        # CPU emulation only: FlexAttention refuses a CPU backward outside torch.compile; its eager path is what
        # the interpreter runs (tests/sambay_model/triton_interpreter_cases.py lifts the same check).
        torch_flex._validate_device = lambda query, key, value: None
    bsz, heads, kv_heads, t, head_dim, window = sz.flex_shape
    torch.manual_seed(0)
    qkv = tuple(torch.randn(bsz, h, t, head_dim, device=sz.device, dtype=torch.bfloat16)
                for h in (heads, kv_heads, kv_heads))
    cuts = torch.tensor([t // 5, t // 2, t - t // 7], device=sz.device)
    docs = (torch.arange(t, device=sz.device)[None, :, None] >= cuts[None, None, :]).sum(-1).repeat(bsz, 1)
    cases = {f"window_{window}": _attention_case(sz, window, docs, qkv), "full": _attention_case(sz, None, docs, qkv)}
    return {"shape_b_h_hkv_t_d": [bsz, heads, kv_heads, t, head_dim], "dtype": "bfloat16", "cases": cases,
            "rule": f"flex error vs fp32 <= {FLEX_SLACK} x torch-bf16 error + {FLEX_FLOOR}",
            "all_ok": all(c["ok"] for c in cases.values()), **compile_figures()}
