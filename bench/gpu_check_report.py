"""The result files of bench/gpu_check.py: ``<stem>.json`` (every figure) and ``<stem>.md`` (a headline table, the
goals, then every part's figures), both written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

MFU_GOAL = 0.40  # issue 14 item 6: the packed bf16 training step of sambay_1b


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, prefix=f".{path.name}.", suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def write(out: Path, stem: str, results: dict) -> None:
    write_atomic(out / f"{stem}.json", json.dumps(results, indent=1, default=str) + "\n")
    write_atomic(out / f"{stem}.md", markdown(results))


def _gib(r: dict) -> str:
    if r.get("peak_memory_gib") is not None:
        return f"peak {r['peak_memory_gib']:.1f} GiB allocated ({r.get('peak_reserved_gib', 0):.1f} reserved)"
    return f"peak RSS {r.get('peak_rss_gib', 0):.2f} GiB (CPU)"


def _bf16_share(r: dict) -> str:
    return f"bf16 share of linear FLOPs {r.get('matmul_flops_share_by_dtype', {}).get('torch.bfloat16', 0):.2f}"


def _mfu_vs_measured(r: dict, env: dict | None) -> str:
    """MFU against the bf16 matmul rate the env part measured on this card (the datasheet peak is the trainer's)."""
    if not env or not env.get("bf16_matmul_tflop_s"):
        return ""
    achieved = r["tokens_per_s"] * r["train_flops_per_token"] / 1e12
    return f", {achieved / env['bf16_matmul_tflop_s']:.3f} of the measured matmul rate"


def headline(name: str, r: dict, env: dict | None = None) -> str:
    """The one line a reader needs from a part that ran (``env``: the env part's result, for the ceilings)."""
    if name == "env":
        return (f"{r.get('gpu', r['device'])}: copy {r['copy_gb_s']} GB/s, bf16 matmul {r['bf16_matmul_tflop_s']} "
                f"TFLOP/s, auto backend {r['auto_backend']}")
    if name == "data":
        return f"{r['tokenizer']} vocab {r['vocab_size']}, pretrain tokens {r['pretrain_tokens']}"
    if name == "pretrain":
        return (f"{r['tokens_per_s']:.0f} tokens/s, MFU {r['mfu']:.3f} (goal >= {MFU_GOAL}: "
                f"{'met' if r['mfu'] >= MFU_GOAL else 'not met'}; attention {r['attention_core_share_of_flops']:.1%}"
                f" of the FLOPs){_mfu_vs_measured(r, env)}, {_gib(r)}, {_bf16_share(r)}")
    if name == "sft":
        return f"{r['tokens_per_row']} tokens in one row: {_gib(r)}, loss {r['loss']}, {_bf16_share(r)}"
    if name == "dpo":
        return f"{r['steps']} steps, losses {r['losses']}, {_gib(r)}, {_bf16_share(r)}"
    if name == "parity":
        f32, b16 = r["fp32_triton_vs_torch"], r["bf16_triton_vs_fp32_torch"]
        verdict = "ok" if f32["within_tolerance"] and b16["within_tolerance"] and r["all_params_compared"] else "FAIL"
        return (f"{verdict}: fp32 logits {f32['logits']:.1e} grads {f32['grads']:.1e}; bf16 vs fp32 logits "
                f"{b16['logits']:.1e} grads {b16['grads']:.1e} (torch bf16: "
                f"{r['bf16_torch_vs_fp32_torch']['logits']:.1e} / {r['bf16_torch_vs_fp32_torch']['grads']:.1e})")
    if name == "scan_bandwidth":
        return f"{r['achieved_gb_s']:.4g} GB/s = {r['fraction_of_copy']:.3g} of copy ({r['copy_gb_s']} GB/s)"
    if name == "decode":
        return (f"SambaY {r['sambay']['tokens_per_s']} tokens/s, Transformer++ {r['transformer++']['tokens_per_s']}"
                f" tokens/s at {r['context']} context (latency ratio {r['sambay_over_transformer_latency']})")
    return ""


def summary(results: dict) -> str:
    """The title and the headline table (what the GPU run prints last)."""
    kind = "dry run on CPU, toy sizes (no GPU figures)" if results["dry_run"] else "GPU"
    lines = [f"# GPU check ({kind})", "", f"started {results['started']}, {results.get('seconds', 0):.0f} s", "",
             "| step | status | s | figures |", "| --- | --- | --- | --- |"]
    for name, r in results["steps"].items():
        if r["status"] == "ok":
            try:
                text = headline(name, r, results["steps"].get("env"))
            except (KeyError, TypeError) as exc:  # a figure missing from a result is itself worth seeing
                text = f"(headline unavailable: {type(exc).__name__}: {exc})"
        else:
            text = r.get("skipped") or r.get("error", "").splitlines()[0][:200]
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', 0):.0f} | {text} |")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    """The summary, then every part's figures."""
    lines = [summary(results)]
    for name, r in results["steps"].items():
        lines += [f"## {name}: {r['status']}", "", "```json",
                  json.dumps({k: v for k, v in r.items() if k != "traceback"}, indent=1, default=str), "```", ""]
    return "\n".join(lines)
