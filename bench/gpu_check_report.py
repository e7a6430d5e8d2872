"""The result files of bench/gpu_check.py: ``<stem>.json`` (every figure) and ``<stem>.md`` (a headline table, the
goals, then every part's figures), both written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

MFU_GOAL = 0.40  # issue 14 item 6: the packed bf16 training step of sambay_1b
SCAN_GOAL = 0.5  # issue 20 item 7: the scan's forward + backward bytes / time against the copy bandwidth


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
                f" of the FLOPs){_mfu_vs_measured(r, env)}, {_gib(r)}, {_bf16_share(r)}, first window "
                f"+{r.get('first_window_excess_s_estimate')} s (compiles and warm-up, estimate)")
    if name == "sft":
        return f"{r['tokens_per_row']} tokens in one row: {_gib(r)}, loss {r['loss']}, {_bf16_share(r)}"
    if name == "dpo":
        return f"{r['steps']} steps, losses {r['losses']}, {_gib(r)}, {_bf16_share(r)}"
    if name == "kernels":
        worst = max(r["cases"].items(), key=lambda kv: kv[1]["errors"][kv[1]["worst"]])
        return (f"{'ok' if r['all_ok'] else 'FAIL ' + ', '.join(r['failed'])}: {len(r['cases'])} cases, worst "
                f"{worst[0]} {worst[1]['worst']} {worst[1]['errors'][worst[1]['worst']]:.1e}; Triton first calls "
                f"{r['triton_first_calls_s']} s")
    if name == "scan_bandwidth":
        fb = r["forward_backward"]
        return (f"forward {r['forward']['fraction_of_copy']:.3g} of copy, forward + backward {fb['achieved_gb_s']:.4g}"
                f" GB/s = {fb['fraction_of_copy']:.3g} of copy ({r['copy_gb_s']} GB/s; goal >= {SCAN_GOAL}: "
                f"{'met' if fb['fraction_of_copy'] >= SCAN_GOAL else 'not met'})")
    if name == "flex":
        errs = {f"{c}.{k}": v for c, case in r["cases"].items() for k, v in case["flex_bf16_vs_fp32"].items()}
        worst = max(errs, key=errs.get)
        return (f"{'ok' if r['all_ok'] else 'FAIL'}: worst {worst} {errs[worst]:.1e} vs fp32 ({r['rule']}); "
                f"compile {r['compile']['dynamo_compile_s']} s")
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
            text = r.get("skipped") or " / ".join(r.get("error", "").splitlines()[:4])[:400]
            if r.get("tokens_per_s"):  # a stage past its limit: the windows it logged before
                text += f" (measured before: {r['tokens_per_s']:.0f} tokens/s, MFU {r['mfu']:.3f})"
        if r.get("recompiles"):
            text += f"; {r['recompiles']} recompiles ({r.get('recompile_limit_hits', 0)} at the limit)"
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', 0):.0f} | {text} |")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    """The summary, then every part's figures."""
    lines = [summary(results)]
    for name, r in results["steps"].items():
        lines += [f"## {name}: {r['status']}", "", "```json",
                  json.dumps({k: v for k, v in r.items() if k != "traceback"}, indent=1, default=str), "```", ""]
    return "\n".join(lines)
