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


def headline(name: str, r: dict) -> str:
    """The one line a reader needs from a part that ran."""
    if name == "env":
        return (f"{r.get('gpu', r['device'])}: copy {r['copy_gb_s']} GB/s, bf16 matmul {r['bf16_matmul_tflop_s']} "
                f"TFLOP/s, auto backend {r['auto_backend']}")
    if name == "data":
        return f"{r['tokenizer']} vocab {r['vocab_size']}, pretrain tokens {r['pretrain_tokens']}"
    if name == "pretrain":
        return (f"{r['tokens_per_s']:.0f} tokens/s, MFU {r['mfu']:.3f} (goal >= {MFU_GOAL}), {_gib(r)}, "
                f"{_bf16_share(r)}")
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
        return f"{r['achieved_gb_s']} GB/s = {r['fraction_of_copy']:.2f} of copy ({r['copy_gb_s']} GB/s)"
    if name == "decode":
        return (f"SambaY {r['sambay']['tokens_per_s']} tokens/s, Transformer++ {r['transformer++']['tokens_per_s']}"
                f" tokens/s at {r['context']} context (latency ratio {r['sambay_over_transformer_latency']})")
    return ""


def markdown(results: dict) -> str:
    kind = "dry run on CPU, toy sizes (no GPU figures)" if results["dry_run"] else "GPU"
    lines = [f"# GPU check ({kind})", "", f"started {results['started']}, {results.get('seconds', 0):.0f} s", "",
             "| step | status | s | figures |", "| --- | --- | --- | --- |"]
    for name, r in results["steps"].items():
        if r["status"] == "ok":
            try:
                text = headline(name, r)
            except (KeyError, TypeError) as exc:  # a figure missing from a result is itself worth seeing
                text = f"(headline unavailable: {type(exc).__name__}: {exc})"
        else:
            text = r.get("skipped") or r.get("error", "").splitlines()[0][:200]
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', 0):.0f} | {text} |")
    lines.append("")
    for name, r in results["steps"].items():
        lines += [f"## {name}: {r['status']}", "", "```json",
                  json.dumps({k: v for k, v in r.items() if k != "traceback"}, indent=1, default=str), "```", ""]
    return "\n".join(lines)
