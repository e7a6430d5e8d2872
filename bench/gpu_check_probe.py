"""Run a training entry point unchanged and record what its computation actually did, for bench/gpu_check.py.

    python -m bench.gpu_check_probe OUT.json MODULE [the module's own arguments ...]
    torchrun --nproc_per_node=1 -m bench.gpu_check_probe OUT.json train.pretrain --config-name sambay_1b ...

MODULE runs through ``runpy`` exactly as ``python -m MODULE ARGS`` would (same argv, ``__main__``). The probe adds
one global forward hook and, at exit, writes (rank 0 only, atomically) OUT.json with:

- ``linear_flops_by_dtype``: FLOPs of every training-mode ``nn.Linear`` forward (grad enabled), summed by the
  dtype its output was computed in (2 x in x out per token). Gradient-checkpoint recomputation counts again.
  ``lm_head_flops_by_dtype`` separately for the output embedding when it runs as a module. This is the dtype
  the matmuls ran in: what DeepSpeed's engine and autocast did, not what the config asked for.
- ``linear_weight_dtypes``, ``autocast_enabled_in_linears``: the parameters' dtypes and the autocast state seen
  inside those forwards.
- ``kept``: dtype of the SSM / differential-attention parameters that must stay fp32 (A_log, D, lambdas).
- ``peak_memory_gib`` / ``peak_reserved_gib``: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` of
  this process (GPU), ``peak_rss_gib``: the process's maximum resident set (any device).
- ``compile``: :func:`compile_figures`, what torch.compile spent in this process (FlexAttention's graphs).

Unlike tests/train/precision_probe.py this leaves ``torch.is_autocast_enabled`` alone: on a GPU the real
behaviour is what is measured.
"""
from __future__ import annotations

import atexit
import json
import os
import resource
import runpy
import sys
from collections import defaultdict

import torch
import torch._dynamo.utils as dynamo_utils

FP32_KEPT = ("A_log", "D", "lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")


def compile_figures() -> dict:
    """What torch.compile did in this process so far: seconds in dynamo's compile of frames (the backend's compile
    of the forward included; a backward compiled on its first call is listed under its own metric when torch
    records one), the number of distinct graphs and of dynamo's calls. Triton kernels of ``sambay_model.ops`` are
    not torch.compile: their JIT time shows as a first call's excess (the parts report first-call seconds)."""
    metrics = dynamo_utils.compilation_time_metrics
    stats = dynamo_utils.counters["stats"]
    backward = {k: round(sum(v), 3) for k, v in metrics.items() if "bw_compiler" in k or "backward" in k}
    return {"compile": {"dynamo_compile_s": round(sum(metrics.get("_compile.compile_inner", [])), 3),
                        "backward_compile_s": backward, "unique_graphs": stats.get("unique_graphs", 0),
                        "calls_captured": stats.get("calls_captured", 0)}}


class Recorder:
    """Accumulates the hook's observations (bounded: sums by dtype, not one record per call)."""

    def __init__(self):
        self.linear_flops: dict[str, float] = defaultdict(float)
        self.head_flops: dict[str, float] = defaultdict(float)
        self.weight_dtypes: set[str] = set()
        self.autocast_states: set[bool] = set()
        self.kept: dict[str, str] = {}
        self.heads: set[int] = set()

    def hook(self, mod, args, output) -> None:
        if hasattr(mod, "get_output_embeddings"):
            head = mod.get_output_embeddings()
            if head is not None:
                self.heads.add(id(head))
        for name in FP32_KEPT:
            p = getattr(mod, name, None)
            if isinstance(p, torch.nn.Parameter):
                self.kept.setdefault(f"{type(mod).__name__}.{name}", str(p.dtype))
        if not (isinstance(mod, torch.nn.Linear) and mod.training and torch.is_grad_enabled()):
            return
        if not (args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor)):
            return
        tokens = args[0].numel() // max(1, mod.in_features)
        flops = 2.0 * tokens * mod.in_features * mod.out_features
        target = self.head_flops if id(mod) in self.heads else self.linear_flops
        target[str(output.dtype)] += flops
        self.weight_dtypes.add(str(mod.weight.dtype))
        self.autocast_states.add(torch.is_autocast_enabled(args[0].device.type))

    def report(self) -> dict:
        out = {"linear_flops_by_dtype": dict(self.linear_flops), "lm_head_flops_by_dtype": dict(self.head_flops),
               "linear_weight_dtypes": sorted(self.weight_dtypes),
               "autocast_enabled_in_linears": sorted(self.autocast_states), "kept": self.kept,
               "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "device": "cuda" if torch.cuda.is_available() else "cpu", **compile_figures()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        return out


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m bench.gpu_check_probe OUT.json MODULE [args ...]")
    out_path, module = sys.argv[1], sys.argv[2]
    rec = Recorder()

    def dump() -> None:
        if os.environ.get("RANK", "0") != "0":
            return
        tmp = f"{out_path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(rec.report(), f)
        os.replace(tmp, out_path)

    torch.nn.modules.module.register_module_forward_hook(rec.hook)
    atexit.register(dump)
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
