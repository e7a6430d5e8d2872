"""The measurements of ``bench/gpu_check.py``, one function per step; each returns a JSON-able dict of figures
(``{"skipped": why}`` when a step cannot run). Sizes come from ``sizes(dry_run)``: the GPU sizes, or toy ones
that let a CPU run every step's code in seconds."""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from bench.bench_model import filled_cache
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM, ops
from sambay_model.ops.backend import BACKENDS
from train.flops import device_peak_flops, flops_per_token, mfu

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "model"
PHI4_VOCAB = 200_064


@dataclass(frozen=True)
class Sizes:
    device: str
    toy: dict  # model overrides that shrink every recipe (empty on GPU)
    vocab: int
    pretrain_rows: int
    pretrain_seq: int
    pretrain_steps: int
    sft_tokens: int
    dpo_pairs: int
    dpo_seq: int
    parity_seq: int
    scan_shape: tuple[int, int, int, int]  # batch, d_inner, time, d_state
    decode_context: int
    decode_steps: int
    copy_mib: int
    matmul_n: int


def sizes(dry_run: bool) -> Sizes:
    if dry_run:
        toy = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, sliding_window=16)
        return Sizes("cpu", toy, 256, 2, 64, 2, 128, 2, 32, 24, (1, 32, 64, 4), 256, 3, 8, 128)
    return Sizes("cuda", {}, 32_064, 2, 4096, 6, 32_768, 4, 1024, 2048, (4, 4096, 4096, 16), 32_768, 32, 2048,
                 8192)


def model_config(recipe: str, sz: Sizes, vocab: int | None = None, **overrides) -> Phi4FlashConfig:
    values = yaml.safe_load((RECIPES / f"{recipe}.yaml").read_text())
    values = {k: v for k, v in values.items() if k not in ("defaults",)}
    values.update(vocab_size=vocab or sz.vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0, **sz.toy)
    values.update(overrides)
    return Phi4FlashConfig(**values)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def packed_batch(rows: int, seq: int, vocab: int, device: str, docs_per_row: int = 4) -> dict:
    """Random tokens with random document boundaries (``doc_ids``), labels = inputs (shifted in the model)."""
    ids = torch.randint(1, vocab, (rows, seq), device=device)
    cuts = torch.sort(torch.randint(1, seq, (rows, docs_per_row - 1), device=device), dim=1).values
    doc = (torch.arange(seq, device=device)[None, :, None] >= cuts[:, None, :]).sum(-1)
    return {"input_ids": ids, "doc_ids": doc, "labels": ids.clone()}


class MatmulDtypes(TorchDispatchMode):
    """FLOPs of every aten matmul by the dtype it ran in (what autocast / DeepSpeed actually did)."""

    OPS = ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm")

    def __init__(self):
        super().__init__()
        self.flops: dict[str, float] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        if name in self.OPS:
            a, b = (args[1], args[2]) if name in ("aten.addmm", "aten.baddbmm") else (args[0], args[1])
            flops = 2.0 * a.numel() * b.shape[-1]
            self.flops[str(a.dtype)] = self.flops.get(str(a.dtype), 0.0) + flops
        elif "scaled_dot_product" in name or "flash" in name:
            q = args[0]
            self.flops[f"{q.dtype} (attention)"] = self.flops.get(f"{q.dtype} (attention)", 0.0) + 1.0
        return out

    def shares(self) -> dict[str, float]:
        total = sum(v for k, v in self.flops.items() if "attention" not in k) or 1.0
        return {k: (round(v / total, 4) if "attention" not in k else int(v)) for k, v in self.flops.items()}


def _train_step(model, opt, batch, device: str) -> float:
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def _build(cfg: Phi4FlashConfig, device: str) -> Phi4FlashForCausalLM:
    """Weights allocated and initialised on the device (a 3.8B model initialised on the host takes minutes)."""
    with torch.device(device):
        return Phi4FlashForCausalLM(cfg)


def _optimizer(model, device: str):
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")


# --------------------------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------------------------
def env(sz: Sizes) -> dict:
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "device": sz.device}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    if sz.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    out["auto_backend"] = ops.resolve_backend("auto", torch.device(sz.device))
    out["copy_gb_s"] = round(copy_bandwidth(sz) / 1e9, 1)
    n = sz.matmul_n
    a, b = (torch.randn(n, n, device=sz.device, dtype=torch.bfloat16) for _ in range(2))
    out["bf16_matmul_tflop_s"] = round(2 * n**3 / _timed(lambda: a @ b, sz.device, 10) / 1e12, 1)
    out["peak_bf16_tflop_s_table"] = device_peak_flops(torch.device(sz.device)) / 1e12
    return out


def copy_bandwidth(sz: Sizes) -> float:
    """Bytes read plus written per second of a large device-to-device copy."""
    x = torch.randn(sz.copy_mib * 2**18, device=sz.device)  # copy_mib MiB of fp32
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / _timed(lambda: y.copy_(x), sz.device, 10)


def pretrain(sz: Sizes) -> dict:
    cfg = model_config("sambay_1b", sz)
    model = _build(cfg, sz.device).train()
    opt = _optimizer(model, sz.device)
    batch = packed_batch(sz.pretrain_rows, sz.pretrain_seq, cfg.vocab_size, sz.device)
    _reset_peak(sz.device)
    losses = [_train_step(model, opt, batch, sz.device)]  # warm-up (kernel compilation)
    _sync(sz.device)
    start = time.perf_counter()
    for _ in range(sz.pretrain_steps):
        losses.append(_train_step(model, opt, batch, sz.device))
    _sync(sz.device)
    seconds = time.perf_counter() - start
    with MatmulDtypes() as dtypes:
        _train_step(model, opt, batch, sz.device)
    tokens_s = sz.pretrain_steps * sz.pretrain_rows * sz.pretrain_seq / seconds
    flops = flops_per_token(cfg, sz.pretrain_seq)
    peak = device_peak_flops(torch.device(sz.device))
    return {"params": sum(p.numel() for p in model.parameters()), "rows_x_seq": [sz.pretrain_rows, sz.pretrain_seq],
            "backend": ops.resolve_backend(cfg.compute_backend, torch.device(sz.device)),
            "tokens_per_s": round(tokens_s), "train_flops_per_token": flops.train,
            "attention_core_share_of_flops": round(flops.attention_core / flops.forward, 4),
            "mfu": round(mfu(tokens_s, flops.train, peak, 1), 4) if peak else None,
            "peak_memory_gib": _peak_gib(sz.device), "matmul_flops_share_by_dtype": dtypes.shares(),
            "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
            "losses": [round(x, 4) for x in losses]}


def sft(sz: Sizes) -> dict:
    big = sz.device == "cuda" and torch.cuda.get_device_properties(0).total_memory >= 120 * 2**30
    recipe = "phi4_mini_flash" if big else "sambay_1b"
    cfg = model_config(recipe, sz, vocab=PHI4_VOCAB if sz.device == "cuda" else sz.vocab)
    model = _build(cfg, sz.device).train()
    model.gradient_checkpointing_enable()
    opt = _optimizer(model, sz.device)
    ids = torch.randint(1, cfg.vocab_size, (1, sz.sft_tokens), device=sz.device)
    labels = ids.clone()
    labels[:, : sz.sft_tokens // 4] = -100  # the prompt part of a conversation carries no loss
    _reset_peak(sz.device)
    start = time.perf_counter()
    loss = _train_step(model, opt, {"input_ids": ids, "labels": labels}, sz.device)
    _sync(sz.device)
    return {"model": recipe, "vocab": cfg.vocab_size, "tokens": sz.sft_tokens,
            "params": sum(p.numel() for p in model.parameters()), "step_s": round(time.perf_counter() - start, 2),
            "peak_memory_gib": _peak_gib(sz.device), "loss": round(loss, 4)}


def _completion_logps(model, ids, prompt_len: int) -> torch.Tensor:
    logits = model(input_ids=ids, use_cache=False).logits[:, prompt_len - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1).sum(-1)


def dpo(sz: Sizes, beta: float = 0.1, steps_n: int = 3) -> dict:
    cfg = model_config("sambay_1b", sz)
    policy = _build(cfg, sz.device).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = _optimizer(policy, sz.device)
    prompt = sz.dpo_seq // 2
    _reset_peak(sz.device)
    losses, start = [], time.perf_counter()
    for _ in range(steps_n):
        chosen, rejected = (torch.randint(1, cfg.vocab_size, (sz.dpo_pairs, sz.dpo_seq), device=sz.device)
                            for _ in range(2))
        rejected[:, :prompt] = chosen[:, :prompt]
        pair = torch.cat([chosen, rejected])
        with torch.autocast(device_type=sz.device, dtype=torch.bfloat16):
            with torch.no_grad():
                ref = _completion_logps(reference, pair, prompt)
            pol = _completion_logps(policy, pair, prompt)
        margin = (pol - ref)[: sz.dpo_pairs] - (pol - ref)[sz.dpo_pairs:]
        loss = -F.logsigmoid(beta * margin).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 4))
    _sync(sz.device)
    return {"pairs_x_seq": [sz.dpo_pairs, sz.dpo_seq], "steps": steps_n,
            "seconds_per_step": round((time.perf_counter() - start) / steps_n, 3),
            "peak_memory_gib": _peak_gib(sz.device), "losses": losses}


def _forward_backward(model, batch, backend: str, dtype: torch.dtype):
    model.config.compute_backend = backend  # the backbone reads it at every forward
    model.zero_grad(set_to_none=True)
    with torch.autocast(device_type=batch["input_ids"].device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(input_ids=batch["input_ids"], doc_ids=batch["doc_ids"], use_cache=False)
    out.logits.float().square().mean().backward()  # a loss that reaches every logit
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach().float(), grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def parity(sz: Sizes) -> dict:
    """triton vs torch on packed rows (every document boundary inside a row), fp32 and bf16, fwd and bwd."""
    if "triton" not in BACKENDS:
        return {"skipped": "compute_backend='triton' does not exist in this checkout"}
    try:
        ops.resolve_backend("triton", torch.device(sz.device))
    except (RuntimeError, ImportError) as exc:
        return {"skipped": f"the triton backend cannot run here: {exc}"}
    cfg = model_config("sambay_1b", sz, hidden_size=512 if not sz.toy else 64, num_hidden_layers=8 if not sz.toy
                       else 4, num_attention_heads=8 if not sz.toy else 4)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = _build(cfg, sz.device)
        batch = packed_batch(2, sz.parity_seq, cfg.vocab_size, sz.device)
        logits_t, grads_t = _forward_backward(model, batch, "triton", dtype)
        logits_r, grads_r = _forward_backward(model, batch, "torch", dtype)
        worst = max(grads_r, key=lambda n: _rel(grads_t[n], grads_r[n]))
        out[str(dtype)] = {"logits_rel_err": _rel(logits_t, logits_r), "max_grad_rel_err": _rel(grads_t[worst],
                           grads_r[worst]), "worst_grad": worst, "params_compared": len(grads_r),
                           "finite": bool(torch.isfinite(logits_t).all())}
    return out


def scan_bandwidth(sz: Sizes) -> dict:
    """Achieved bandwidth of the selective scan on bf16 inputs with document resets, against a plain copy."""
    bsz, d, t, n = sz.scan_shape
    dev, bf = sz.device, torch.bfloat16
    u, delta = (torch.randn(bsz, d, t, device=dev, dtype=bf) for _ in range(2))
    b_mat, c_mat = (torch.randn(bsz, n, t, device=dev, dtype=bf) for _ in range(2))
    a = -torch.rand(d, n, device=dev) - 0.5
    skip = torch.randn(d, device=dev)
    resets = torch.rand(bsz, t, device=dev) < 1e-3
    backend = ops.resolve_backend("auto", torch.device(dev))

    def call():
        return ops.selective_scan(u, delta, a, b_mat, c_mat, skip, delta_softplus=True, resets=resets,
                                  backend=backend)

    seconds = _timed(call, dev, 3 if sz.toy else 5)
    # Fewest bytes: read u, delta, B, C (bf16) and the resets, write y (bf16).
    nbytes = 2 * (3 * bsz * d * t + 2 * bsz * n * t) + bsz * t
    copy = copy_bandwidth(sz)
    return {"shape_b_d_t_n": list(sz.scan_shape), "backend": backend, "ms": round(1e3 * seconds, 3),
            "achieved_gb_s": round(nbytes / seconds / 1e9, 1), "copy_gb_s": round(copy / 1e9, 1),
            "fraction_of_copy": round(nbytes / seconds / copy, 4)}


@torch.no_grad()
def decode(sz: Sizes) -> dict:
    """Decode tokens/s at ``decode_context`` for SambaY (DA, as the official model) and Transformer++."""
    dtype = torch.bfloat16 if sz.device == "cuda" else torch.float32
    out = {"context": sz.decode_context, "dtype": str(dtype)}
    models = {"sambay": model_config("sambay_1b", sz),
              "transformer++": model_config("sambay_1b", sz, backbone="transformer")}
    for name, cfg in models.items():
        model = _build(cfg, sz.device).to(dtype).eval()
        cache, token = filled_cache(model, sz.decode_context)
        step = lambda: model(token, past_key_values=cache, use_cache=True)  # noqa: E731
        ms = 1e3 * _timed(step, sz.device, sz.decode_steps)
        out[name] = {"ms_per_token": round(ms, 3), "tokens_per_s": round(1e3 / ms, 1),
                     "cache_gib": round(cache.nbytes() / 2**30, 3)}
        del model, cache
        _reset_peak(sz.device)
    out["sambay_over_transformer_latency"] = round(out["sambay"]["ms_per_token"]
                                                   / out["transformer++"]["ms_per_token"], 4)
    return out
