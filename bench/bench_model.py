"""SambaY vs a matched Transformer++ baseline on CPU: prefill time, per-token decode latency, cache bytes.

Both models share width, depth, heads and MLP (a small config so the run takes minutes); they differ only in the
backbone. Prefill is what ``generate`` runs (cache on, logits for the last position only, so SambaY's cross-decoder
runs on one position); decode latency is the median over ``--decode-steps`` single-token steps after that prefill.
Ratios are SambaY / baseline, measured in the same process.

    python bench/bench_model.py                       # prints the table and writes bench/results/model_cpu.txt
    python bench/bench_model.py --contexts 1024 --out /tmp/x.txt
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM, SambaYCache  # noqa: E402


def bench_config(backbone: str, args) -> Phi4FlashConfig:
    return Phi4FlashConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        sliding_window=args.window, backbone=backbone, compute_backend="torch",
        # The baseline is a plain Transformer++ (no differential attention); SambaY keeps its official DA.
        use_diff_attn=backbone == "sambay", bos_token_id=0, eos_token_id=0,
    )


@torch.no_grad()
def measure(model: Phi4FlashForCausalLM, context: int, decode_steps: int) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (1, context))
    cache = SambaYCache(model.config)
    start = time.perf_counter()
    logits = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    prefill_s = time.perf_counter() - start
    step_times = []
    token = logits[:, -1:].argmax(-1)
    for _ in range(decode_steps):
        start = time.perf_counter()
        logits = model(token, past_key_values=cache, use_cache=True).logits
        step_times.append(time.perf_counter() - start)
        token = logits[:, -1:].argmax(-1)
    return {"prefill_s": prefill_s, "decode_ms": 1e3 * statistics.median(step_times), "cache_bytes": cache.nbytes()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine more threads mostly measure contention)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "model_cpu.txt")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    if args.out.exists() and not args.force:
        p.error(f"{args.out} exists; pass --force to overwrite it")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    models = {name: Phi4FlashForCausalLM(bench_config(name, args)).eval() for name in ("sambay", "transformer")}
    lines = [
        "bench_model: SambaY vs Transformer++ (same width/depth), CPU, batch 1, fp32, compute_backend=torch",
        f"config: hidden={args.hidden} layers={args.layers} heads={args.heads} kv_heads={args.kv_heads} "
        f"window={args.window} vocab={args.vocab} decode_steps={args.decode_steps}",
        f"params: sambay={sum(q.numel() for q in models['sambay'].parameters()):,} "
        f"transformer={sum(q.numel() for q in models['transformer'].parameters()):,}",
        f"host: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads={torch.get_num_threads()} (shared machine: timings are noisy)",
        "",
        f"{'context':>8} | {'model':>11} | {'prefill s':>9} | {'decode ms/token':>15} | {'cache MiB':>9}",
        "-" * 66,
    ]
    ratios = []
    for context in args.contexts:
        results = {}
        for name, model in models.items():
            measure(model, 64, 2)  # warm-up: allocator and kernel dispatch
            results[name] = r = measure(model, context, args.decode_steps)
            lines.append(f"{context:>8} | {name:>11} | {r['prefill_s']:>9.3f} | {r['decode_ms']:>15.2f} | "
                         f"{r['cache_bytes'] / 2**20:>9.2f}")
            print(lines[-1], flush=True)
        s, t = results["sambay"], results["transformer"]
        ratios.append(f"{context:>8} | prefill {s['prefill_s'] / t['prefill_s']:6.3f} | "
                      f"decode {s['decode_ms'] / t['decode_ms']:6.3f} | "
                      f"cache {s['cache_bytes'] / t['cache_bytes']:6.3f}")
    lines += ["", "SambaY / Transformer++ ratios (< 1: SambaY is cheaper)", *ratios]
    text = "\n".join(lines) + "\n"
    print("\n".join(lines[-len(ratios) - 2:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
