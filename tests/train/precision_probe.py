"""Run a training entry point (``python precision_probe.py OUT.json MODULE [overrides]``) and record, for every
training-mode forward of an ``nn.Linear``, the dtypes it computed in, plus the dtypes of the SSM / lambda
parameters the model kept. Used by tests/train/test_precision_bf16_e2e.py.

GPU condition, emulated: on CUDA, ``torch.is_autocast_enabled()`` without an argument reports the autocast
state of the device DeepSpeed runs on, so DeepSpeed's ``autocast_if_enabled`` sees an autocast opened outside
the engine (and, without a ``torch_autocast`` section, disables it inside). On CPU the no-argument form asks
about CUDA and is always False, which hides that branch; the probe makes it device-aware (CPU) as on a GPU node.
"""
import atexit
import json
import runpy
import sys

import torch

FP32_KEPT = ("A_log", "D", "lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")


def main() -> None:
    out_path, module = sys.argv[1], sys.argv[2]
    linears: list[dict] = []
    kept: dict[str, str] = {}
    heads: set[int] = set()
    original = torch.is_autocast_enabled
    torch.is_autocast_enabled = lambda *args: original(*args) if args else original("cpu")

    def hook(mod, args, output):
        if hasattr(mod, "get_output_embeddings"):
            head = mod.get_output_embeddings()
            if head is not None:
                heads.add(id(head))
        for name in FP32_KEPT:
            p = getattr(mod, name, None)
            if isinstance(p, torch.nn.Parameter):
                kept.setdefault(f"{type(mod).__name__}.{name}", str(p.dtype))
        if isinstance(mod, torch.nn.Linear) and mod.training and torch.is_grad_enabled():
            linears.append({"id": id(mod), "input": str(args[0].dtype), "output": str(output.dtype),
                            "weight": str(mod.weight.dtype), "comm_dtype": str(getattr(mod.weight, "comm_dtype", None)),
                            "autocast_cache": torch.is_autocast_cache_enabled()})

    def dump():
        for rec in linears:
            rec["lm_head"] = rec.pop("id") in heads
        with open(out_path, "w") as f:
            json.dump({"linears": linears, "kept": kept}, f)

    torch.nn.modules.module.register_module_forward_hook(hook)
    atexit.register(dump)
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
