"""SambaY (with and without differential attention) vs a matched Transformer++ on CPU: decode latency per token,
prefill time and cache bytes, measured side by side in one process.

All three models share width, depth (16 layers by default: with 8 too few layers separate SambaY's 1 + L/4 layers
that read the shared K,V from the baseline's L), heads and MLP width; they differ only in ``backbone`` and
``use_diff_attn`` (``sambay_model.configuration_phi4flash`` defines the baselines).

- Decode: for each context, every model's cache holds ``context`` tokens, then single-token steps of the three models
  are interleaved (so load on a shared machine hits all of them alike) and each model's median step time is taken.
  The cache is filled by a real 64-token prefill (Mamba states, K,V) and then random K,V appended through
  ``Phi4FlashCache.update_kv`` up to the context: a decode step's cost does not depend on the cached values, and this
  keeps the baseline's O(T^2) prefill at 32K out of the run time.
  The SambaY variants also step a cache of the smallest context in the same rounds (the 16K / 1K flatness ratio).
- Prefill: real ``generate``-style prefills (cache on, logits of the last position only, so SambaY's cross-decoder
  runs on one position) at ``--prefill-contexts``, each right after one at the smallest context (the 16K / 1K
  ratio uses that pair); the baseline up to ``--baseline-prefill-max``.
- Bytes: the fewest bytes a decode step must read (weights once, the K,V each layer attends over), the ratio the
  measured decode ratio approaches when memory traffic dominates.
- Cache bytes: ``nbytes()`` (the state) against the formula of docs/architecture.md §9.1, and the slope in bytes per
  token.

    python bench/bench_model.py                  # writes bench/results/model_cpu.md and .json (--force to redo)
    python bench/bench_model.py --contexts 1024 4096 --out /tmp/x
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sambay_model import Phi4FlashCache, Phi4FlashConfig, Phi4FlashForCausalLM  # noqa: E402

MODELS = {  # name -> config overrides
    "sambay_da": dict(backbone="sambay", use_diff_attn=True),
    "sambay": dict(backbone="sambay", use_diff_attn=False),
    "transformer++": dict(backbone="transformer"),
}
GOALS = {"decode_ratio_16k": 0.35, "decode_flatness_16k_1k": 1.5, "prefill_16k_1k": 20.0}


def bench_config(overrides: dict, args) -> Phi4FlashConfig:
    return Phi4FlashConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        sliding_window=args.window, compute_backend="torch", bos_token_id=0, eos_token_id=0, **overrides,
    )


def theory_cache_bytes(cfg: Phi4FlashConfig, tokens: int, elem: int = 4) -> int:
    """docs/architecture.md §9.1 for batch 1: Mamba conv (d_conv - 1 inputs) + SSM state, SWA K,V of min(window,
    tokens), and full K,V of every token in each full-attention layer (1 in SambaY, every layer in Transformer++)."""
    kv = 2 * cfg.num_key_value_heads * cfg.head_dim
    roles = [cfg.layer_role(i) for i in range(cfg.num_hidden_layers)]
    mamba = sum(r in ("mamba", "memory_mamba") for r in roles) * cfg.mamba_d_inner * (cfg.mamba_d_conv - 1
                                                                                      + cfg.mamba_d_state)
    swa = sum(min(cfg.sliding_window[i], tokens) for i, r in enumerate(roles) if r == "swa") * kv
    return (mamba + swa + roles.count("full_attn") * kv * tokens) * elem


def bytes_read_per_step(cfg: Phi4FlashConfig, params: int, tokens: int, elem: int = 4) -> int:
    """The fewest bytes a decode step must read: every weight once (the tied head reads the embedding) and the
    K,V each attention layer attends over (the whole context for full and cross attention, the window for SWA)."""
    kv = 2 * cfg.num_key_value_heads * cfg.head_dim * elem
    roles = [cfg.layer_role(i) for i in range(cfg.num_hidden_layers)]
    keys = sum(tokens if r in ("full_attn", "cross_attn") else min(cfg.sliding_window[i], tokens)
               for i, r in enumerate(roles) if r in ("full_attn", "cross_attn", "swa"))
    return params * elem + kv * keys


@torch.no_grad()
def filled_cache(model: Phi4FlashForCausalLM, context: int, prompt: int = 64) -> tuple[Phi4FlashCache, torch.Tensor]:
    """A cache holding ``context`` tokens: a real prefill of ``prompt`` tokens, then random K,V appended in chunks."""
    cfg = model.config
    weight = model.lm_head.weight
    cache = Phi4FlashCache(cfg)
    logits = model(torch.randint(0, cfg.vocab_size, (1, prompt), device=weight.device), past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits
    layers = [layer.attn for layer in model.model.layers if layer.role in ("swa", "full_attn")]
    for start in range(prompt, context, 4096):
        n = min(4096, context - start)
        for attn in layers:
            kv = torch.randn(2, 1, cfg.num_key_value_heads, n, cfg.head_dim, device=weight.device, dtype=weight.dtype)
            cache.update_kv(attn.layer_idx, kv[0], kv[1], attn.window)
        cache.advance(n)
    return cache, logits[:, -1:].argmax(-1)


@torch.no_grad()
def decode_side_by_side(models: dict, context: int, steps: int, reference: int) -> dict:
    """Median decode ms of every model at ``context``, plus the SambaY variants at ``reference`` context in the
    same interleaved rounds (``decode_ms_at_reference``: the flatness ratio from steps taken side by side)."""
    runs = {(name, context): filled_cache(m, context) for name, m in models.items()}
    if reference != context:
        runs.update({(name, reference): filled_cache(m, reference) for name, m in models.items() if "sambay" in name})
    times = {key: [] for key in runs}
    for _ in range(steps + 1):  # the first round is a warm-up
        for key, (cache, token) in runs.items():
            model = models[key[0]]
            start = time.perf_counter()
            logits = model(token, past_key_values=cache, use_cache=True).logits
            times[key].append(time.perf_counter() - start)
            runs[key] = (cache, logits[:, -1:].argmax(-1))
    median_ms = {key: 1e3 * statistics.median(t[1:]) for key, t in times.items()}
    state = {name: runs[(name, context)] for name in models}
    out = {name: {"decode_ms": median_ms[(name, context)], "cache_bytes": state[name][0].nbytes(),
                   "cache_bytes_allocated": state[name][0].nbytes_allocated(),
                   "cache_bytes_theory": theory_cache_bytes(models[name].config, context + steps + 1),
                   "bytes_read_per_step": bytes_read_per_step(models[name].config, sum(
                       p.numel() for p in models[name].parameters()), context)}
           for name in models}
    for name in out:
        if (name, reference) in median_ms:
            out[name]["decode_ms_at_reference"] = median_ms[(name, reference)]
    return out


@torch.no_grad()
def prefill_seconds(model: Phi4FlashForCausalLM, context: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, context))
    start = time.perf_counter()
    model(ids, past_key_values=Phi4FlashCache(model.config), use_cache=True, logits_to_keep=1)
    return time.perf_counter() - start


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    models = {name: Phi4FlashForCausalLM(bench_config(o, args)).eval() for name, o in MODELS.items()}
    for m in models.values():  # warm-up: allocator and kernel dispatch
        prefill_seconds(m, 64)
    rows = {}
    reference = min(args.contexts)
    for context in args.contexts:
        row = decode_side_by_side(models, context, args.decode_steps, reference)
        for name, model in models.items():
            if context in args.prefill_contexts and (name != "transformer++" or context <= args.baseline_prefill_max):
                # The reference-context prefill right before, so that the ratio is not one of two machine loads.
                row[name]["prefill_s_at_reference"] = prefill_seconds(model, reference)
                row[name]["prefill_s"] = prefill_seconds(model, context)
        rows[context] = row
        print(json.dumps({context: {n: round(r["decode_ms"], 2) for n, r in row.items()}}), flush=True)
    return {"config": {k: getattr(args, k) for k in ("hidden", "intermediate", "layers", "heads", "kv_heads",
                                                      "window", "vocab", "decode_steps", "threads", "seed")},
            "params": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
            "host": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
            "results": rows, "ratios": ratios(rows)}


def ratios(rows: dict) -> dict:
    out = {}
    base = "transformer++"
    for variant in ("sambay_da", "sambay"):
        r = {f"decode_vs_transformer_{c}": rows[c][variant]["decode_ms"] / rows[c][base]["decode_ms"] for c in rows}
        r.update({f"bytes_read_vs_transformer_{c}": rows[c][variant]["bytes_read_per_step"]
                  / rows[c][base]["bytes_read_per_step"] for c in rows})
        long = rows.get(16384, {}).get(variant, {})
        if min(rows) == 1024 and "decode_ms_at_reference" in long:  # both from the same interleaved rounds
            r["decode_16k_over_1k"] = long["decode_ms"] / long["decode_ms_at_reference"]
        if min(rows) == 1024 and "prefill_s" in long:  # 1K prefill measured right before the 16K one
            r["prefill_16k_over_1k"] = long["prefill_s"] / long["prefill_s_at_reference"]
        out[variant] = r
    return out


def markdown(report: dict) -> str:
    cfg, rows = report["config"], report["results"]
    lines = [
        "# bench_model: SambaY vs Transformer++ decode / prefill / cache (CPU, batch 1, fp32, compute_backend=torch)",
        "",
        f"config: {', '.join(f'{k}={v}' for k, v in cfg.items())}; params: "
        + ", ".join(f"{n} {p:,}" for n, p in report["params"].items()),
        f"host: {report['host']} (a shared machine: absolute times are noisy; the decode steps of the three models "
        "are interleaved, so the ratios are the figures to read)",
        "",
        "| context | model | decode ms/token | prefill s | cache MiB (state) | allocated MiB | state / theory | "
        "MiB read per step (fewest) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for context, row in rows.items():
        for name, r in row.items():
            prefill = f"{r['prefill_s']:.2f}" if "prefill_s" in r else "-"
            lines.append(f"| {context} | {name} | {r['decode_ms']:.2f} | {prefill} | {r['cache_bytes'] / 2**20:.2f} | "
                         f"{r['cache_bytes_allocated'] / 2**20:.2f} | {r['cache_bytes'] / r['cache_bytes_theory']:.4f} | "
                         f"{r['bytes_read_per_step'] / 2**20:.1f} |")
    lines += ["", "| ratio | goal | " + " | ".join(report["ratios"]) + " |", "|---|---:|" + "---:|" * len(report["ratios"])]
    keys = sorted({k for r in report["ratios"].values() for k in r}, key=lambda k: (k.split("_")[0], k))
    for key in keys:
        goal = {"decode_vs_transformer_16384": GOALS["decode_ratio_16k"], "decode_16k_over_1k":
                GOALS["decode_flatness_16k_1k"], "prefill_16k_over_1k": GOALS["prefill_16k_1k"]}.get(key)
        vals = " | ".join(f"{r[key]:.3f}" if key in r else "-" for r in report["ratios"].values())
        lines.append(f"| {key} | {'<= ' + str(goal) if goal else ''} | {vals} |")
    slope = []
    contexts = sorted(rows)
    if len(contexts) > 1:
        a, b = contexts[0], contexts[-1]
        for name in rows[a]:
            measured = (rows[b][name]["cache_bytes"] - rows[a][name]["cache_bytes"]) / (b - a)
            theory = (rows[b][name]["cache_bytes_theory"] - rows[a][name]["cache_bytes_theory"]) / (b - a)
            slope.append(f"- {name}: {measured:.0f} bytes per extra token (theory {theory:.0f})")
        lines += ["", f"Cache growth between {a} and {b} tokens:", *slope]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--decode-steps", type=int, default=12)
    p.add_argument("--prefill-contexts", type=int, nargs="*", default=[1024, 4096, 16384],
                   help="contexts at which prefill is timed (each after a prefill at the smallest context)")
    p.add_argument("--baseline-prefill-max", type=int, default=4096,
                   help="largest context at which the baseline's O(T^2) prefill is timed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine more threads mostly measure contention)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "model_cpu",
                   help="output stem: writes <out>.md and <out>.json")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    args = p.parse_args(argv)
    outputs = [args.out.with_suffix(".md"), args.out.with_suffix(".json")]
    if any(o.exists() for o in outputs) and not args.force:
        p.error(f"{outputs[0]} or {outputs[1]} exists; pass --force to overwrite")
    report = run(args)
    text = markdown(report)
    write_atomic(outputs[1], json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(outputs[0], text)
    print(text)
    print(f"wrote {outputs[0]} and {outputs[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
