"""SambaY (with and without differential attention) vs a matched Transformer++ on CPU: decode latency per token
against its fewest-bytes floor, decode throughput under a fixed cache-memory budget, prefill time and cache bytes,
measured side by side in one process.

All three models share width, depth (16 layers by default: with 8 too few layers separate SambaY's 1 + L/4 layers
that read the shared K,V from the baseline's L), heads and MLP width; they differ only in ``backbone`` and
``use_diff_attn`` (``sambay_model.configuration_phi4flash`` defines the baselines).

- Decode at batch 1: for each context, every model's cache holds ``context`` tokens, then single-token steps of the
  three models are interleaved (so load on a shared machine hits all of them alike) and each model's median step
  time is taken. The cache is filled by a real 64-token prefill (Mamba states, K,V) and then random K,V appended
  through ``Phi4FlashCache.update_kv`` up to the context: a decode step's cost does not depend on the cached values,
  and this keeps the baseline's O(T^2) prefill at 32K out of the run time.
  The SambaY variants also step a cache of the smallest context in the same rounds (the 16K / 1K flatness ratio).
- Floor: the fewest bytes a step must read (weights once, Mamba states, the K,V each layer attends over) divided by
  the copy bandwidth, timed in the same interleaved rounds (one thread copying ``--copy-mib`` MiB: bytes read plus
  written per second, the convention of bench/gpu_check). The SambaY / Transformer++ decode ratio is set against
  the ratio of those bytes, which it approaches when memory traffic dominates (goal: <= 1.15 x at 16K and 32K).
- Budget (the paper's regime, where the KV cache dominates): at ``--budget-context`` each model decodes as many
  sequences at once as fit ``--budget-gib`` of cache state (batch = floor(budget / state bytes per sequence), the
  state when the last timed step is done), steps interleaved as above; tokens/s = batch / median step time
  (goal: SambaY / Transformer++ >= 5).
- Prefill: real ``generate``-style prefills (cache on, logits of the last position only, so SambaY's cross-decoder
  runs on one position) at ``--prefill-contexts``, each right after one at the smallest context (the 16K / 1K
  ratio uses that pair, goal <= 20); the baseline up to ``--baseline-prefill-max``.
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
from sambay_model import LayerRole, Phi4FlashCache, Phi4FlashConfig, Phi4FlashForCausalLM  # noqa: E402

MODELS = {  # name -> config overrides
    "sambay_da": dict(backbone="sambay", use_diff_attn=True),
    "sambay": dict(backbone="sambay", use_diff_attn=False),
    "transformer++": dict(backbone="transformer"),
}
BASELINE = "transformer++"
# Issue 20 item 8. They replace issue 14's decode ratio <= 0.35 at 16K and flatness 16K / 1K <= 1.5, which a step
# bound by memory traffic cannot meet together (docs/results.md derives it); those two ratios are still reported.
GOALS = {"decode_over_bytes_ratio": 1.15, "budget_tokens_per_s_ratio": 5.0, "prefill_16k_over_1k": 20.0}
BYTES_GOAL_CONTEXTS = (16384, 32768)  # where the decode ratio is held to its bytes ratio (1K is latency-bound)
# Attend over every cached token (LayerRole.SWA: over its window).
KV_READ_ROLES = (LayerRole.FULL_ATTN, LayerRole.CROSS_ATTN)
LIMITS = """What these figures cannot tell:
- They are CPU figures (fp32, compute_backend=torch, the threads above), not GPU ones: the floor is this machine's
  copy rate; a decode / floor well above 1 means the step is held by something else (per-operation overhead,
  compute on the threads above), one below 1 that part of what it reads stayed in the CPU's caches between steps.
- The budget counts cache state, what a paged cache (vLLM's) holds; this cache's buffers allocate more (they grow
  geometrically: about 25% more at long contexts, the allocated column). It is steady-state decoding at a full
  context, not the paper's whole 2K-prompt + 32K generation, and the numbers of sequences are whole: the ratio
  moves in steps as the budget or context changes."""


def bench_config(overrides: dict, args) -> Phi4FlashConfig:
    return Phi4FlashConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        sliding_window=args.window, compute_backend="torch", bos_token_id=0, eos_token_id=0, **overrides,
    )


def _roles(cfg: Phi4FlashConfig) -> list[LayerRole]:
    return [cfg.layer_role(i) for i in range(cfg.num_hidden_layers)]


def _mamba_state_elements(cfg: Phi4FlashConfig) -> int:
    """Per sequence: every Mamba layer's conv state (d_conv - 1 inputs) and SSM state."""
    per_layer = cfg.mamba_d_inner * (cfg.mamba_d_conv - 1 + cfg.mamba_d_state)
    return sum(r.is_mamba for r in _roles(cfg)) * per_layer


def theory_cache_bytes(cfg: Phi4FlashConfig, tokens: int, elem: int = 4) -> int:
    """docs/architecture.md §9.1 for batch 1: Mamba conv (d_conv - 1 inputs) + SSM state, SWA K,V of min(window,
    tokens), and full K,V of every token in each full-attention layer (1 in SambaY, every layer in Transformer++)."""
    kv = 2 * cfg.num_key_value_heads * cfg.head_dim
    roles = _roles(cfg)
    swa = sum(min(cfg.sliding_window[i], tokens) for i, r in enumerate(roles) if r == LayerRole.SWA) * kv
    return (_mamba_state_elements(cfg) + swa + roles.count(LayerRole.FULL_ATTN) * kv * tokens) * elem


def bytes_read_per_step(cfg: Phi4FlashConfig, params: int, tokens: int, elem: int = 4) -> int:
    """The fewest bytes a batch-1 decode step must read: every weight once (the tied head reads the embedding), the
    Mamba states, and the K,V each attention layer attends over (the whole context for full and cross attention,
    the window for SWA; SambaY's shared K,V is read by each of its L/4 readers)."""
    kv = 2 * cfg.num_key_value_heads * cfg.head_dim
    keys = sum(tokens if r in KV_READ_ROLES else min(cfg.sliding_window[i], tokens)
               for i, r in enumerate(_roles(cfg)) if r in (*KV_READ_ROLES, LayerRole.SWA))
    return (params + kv * keys + _mamba_state_elements(cfg)) * elem


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def filled_cache(model: Phi4FlashForCausalLM, context: int, prompt: int = 64,
                 batch: int = 1) -> tuple[Phi4FlashCache, torch.Tensor]:
    """A cache of ``batch`` sequences holding ``context`` tokens each: a real prefill of ``prompt`` tokens, then
    random K,V appended in chunks. Returns it with the next input token ``[batch, 1]``."""
    cfg = model.config
    weight = model.lm_head.weight
    cache = Phi4FlashCache(cfg)
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt), device=weight.device)
    logits = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    layers = [layer.attn for layer in model.model.layers if layer.role in (LayerRole.SWA, LayerRole.FULL_ATTN)]
    for start in range(prompt, context, 4096):
        n = min(4096, context - start)
        for attn in layers:
            # A window layer keeps only its last `window` tokens: K,V before those would be dropped unread.
            t = n if attn.window is None else min(n, attn.window)
            kv = torch.randn(2, batch, cfg.num_key_value_heads, t, cfg.head_dim, device=weight.device,
                             dtype=weight.dtype)
            cache.update_kv(attn.layer_idx, kv[0], kv[1], attn.window)
        cache.advance(n)
    return cache, logits[:, -1:].argmax(-1)


def decode_step(model: Phi4FlashForCausalLM, cache: Phi4FlashCache, token: torch.Tensor):
    """A callable: each call is one decode step of ``model`` on ``cache``, fed its own previous greedy tokens."""
    def step() -> None:
        nonlocal token
        with torch.no_grad():
            token = model(token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    return step


def copy_step(mib: int):
    """A callable copying ``mib`` MiB (fp32, random) into another buffer, and the bytes it moves (read + written)."""
    src = torch.randn(mib * 2**18)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), 2 * src.numel() * src.element_size()


def interleaved_medians(calls: dict, rounds: int) -> dict:
    """Median seconds per call over ``rounds`` rounds, each running every call once in turn (after a warm-up
    round), so that load on a shared machine hits all of them alike."""
    times = {key: [] for key in calls}
    for r in range(rounds + 1):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            if r:
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


@torch.no_grad()
def decode_side_by_side(models: dict, context: int, steps: int, reference: int, copy_mib: int) -> tuple[dict, float]:
    """Median decode ms of every model at ``context`` and its floor, plus the SambaY variants at ``reference``
    context in the same interleaved rounds (``decode_ms_at_reference``: the flatness ratio from steps taken side by
    side). Returns the row and the copy bandwidth (bytes/s) timed in those rounds."""
    caches = {(name, context): filled_cache(m, context) for name, m in models.items()}
    if reference != context:
        caches.update({(name, reference): filled_cache(m, reference) for name, m in models.items() if "sambay" in name})
    calls = {key: decode_step(models[key[0]], *state) for key, state in caches.items()}
    calls["copy"], copy_bytes = copy_step(copy_mib)
    median = interleaved_medians(calls, steps)
    copy_bps = copy_bytes / median.pop("copy")
    out = {}
    for name, model in models.items():
        cache = caches[(name, context)][0]
        read = bytes_read_per_step(model.config, n_params(model), context)
        out[name] = {"decode_ms": 1e3 * median[(name, context)], "floor_ms": 1e3 * read / copy_bps,
                     "cache_bytes": cache.nbytes(), "cache_bytes_allocated": cache.nbytes_allocated(),
                     "cache_bytes_theory": theory_cache_bytes(model.config, context + steps + 1),
                     "bytes_read_per_step": read}
        if (name, reference) in median:  # the context itself when it is the reference
            out[name]["decode_ms_at_reference"] = 1e3 * median[(name, reference)]
    return out, copy_bps


@torch.no_grad()
def budget_throughput(models: dict, context: int, budget_bytes: int, steps: int,
                      copy_mib: int) -> tuple[dict, float]:
    """Each model decodes floor(budget / state bytes per sequence) sequences at ``context``, steps interleaved
    (with the copy that gives the floor); the bytes per sequence are the state once the last step is done
    (context + warm-up + ``steps`` tokens). A step's floor reads the weights once and every sequence's states.
    Returns the rows and the copy bandwidth (bytes/s) timed in those rounds."""
    out, caches, calls = {}, {}, {}
    for name, model in models.items():
        per_sequence = theory_cache_bytes(model.config, context + steps + 1)
        out[name] = {"cache_bytes_per_sequence": per_sequence, "batch": budget_bytes // per_sequence}
        if out[name]["batch"]:
            cache, token = filled_cache(model, context, batch=out[name]["batch"])
            caches[name], calls[name] = cache, decode_step(model, cache, token)
    calls["copy"], copy_bytes = copy_step(copy_mib)
    median = interleaved_medians(calls, steps)
    copy_bps = copy_bytes / median.pop("copy")
    for name, r in out.items():
        cfg, params = models[name].config, n_params(models[name])
        read = bytes_read_per_step(cfg, params, context) + (r["batch"] - 1) * bytes_read_per_step(cfg, 0, context)
        r["floor_ms"] = 1e3 * read / copy_bps if name in median else None
        r["step_ms"] = 1e3 * median[name] if name in median else None
        r["tokens_per_s"] = r["batch"] / median[name] if name in median else 0.0
        r["cache_bytes"] = caches[name].nbytes() if name in caches else 0
        r["cache_bytes_allocated"] = caches[name].nbytes_allocated() if name in caches else 0
    return out, copy_bps


@torch.no_grad()
def prefill_seconds(model: Phi4FlashForCausalLM, context: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, context))
    start = time.perf_counter()
    model(ids, past_key_values=Phi4FlashCache(model.config), use_cache=True, logits_to_keep=1)
    return time.perf_counter() - start


def add_prefill(row: dict, models: dict, context: int, reference: int, args) -> None:
    for name, model in models.items():
        if context in args.prefill_contexts and (name != BASELINE or context <= args.baseline_prefill_max):
            # The reference-context prefill right before, so that the ratio is not one of two machine loads.
            row[name]["prefill_s_at_reference"] = prefill_seconds(model, reference)
            row[name]["prefill_s"] = prefill_seconds(model, context)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    models = {name: Phi4FlashForCausalLM(bench_config(o, args)).eval() for name, o in MODELS.items()}
    for m in models.values():  # warm-up: allocator and kernel dispatch
        prefill_seconds(m, 64)
    rows, copy_gb_s = {}, {}
    reference = min(args.contexts)
    for context in args.contexts:
        row, copy_bps = decode_side_by_side(models, context, args.decode_steps, reference, args.copy_mib)
        add_prefill(row, models, context, reference, args)
        rows[context], copy_gb_s[context] = row, copy_bps / 1e9
        print(json.dumps({context: {n: round(r["decode_ms"], 2) for n, r in row.items()}}), flush=True)
    budget, budget_copy_bps = budget_throughput(models, args.budget_context, int(args.budget_gib * 2**30),
                                                args.budget_steps, args.copy_mib)
    print(json.dumps({"budget": {n: round(r["tokens_per_s"], 2) for n, r in budget.items()}}), flush=True)
    keys = ("hidden", "intermediate", "layers", "heads", "kv_heads", "window", "vocab", "decode_steps", "threads",
            "seed", "copy_mib", "budget_gib", "budget_context", "budget_steps")
    return {"config": {k: getattr(args, k) for k in keys},
            "params": {n: n_params(m) for n, m in models.items()},
            "host": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
            "results": rows, "copy_gb_s": copy_gb_s, "ratios": ratios(rows),
            "budget": budget, "budget_copy_gb_s": budget_copy_bps / 1e9, "budget_ratios": budget_ratios(budget)}


def ratios(rows: dict) -> dict:
    out = {}
    for variant in ("sambay_da", "sambay"):
        r = {}
        for c in rows:
            r[f"decode_vs_transformer_{c}"] = rows[c][variant]["decode_ms"] / rows[c][BASELINE]["decode_ms"]
            r[f"bytes_read_vs_transformer_{c}"] = (rows[c][variant]["bytes_read_per_step"]
                                                   / rows[c][BASELINE]["bytes_read_per_step"])
            r[f"decode_over_bytes_ratio_{c}"] = r[f"decode_vs_transformer_{c}"] / r[f"bytes_read_vs_transformer_{c}"]
        long = rows.get(16384, {}).get(variant, {})
        if min(rows) == 1024 and "decode_ms_at_reference" in long:  # both from the same interleaved rounds
            r["decode_16k_over_1k"] = long["decode_ms"] / long["decode_ms_at_reference"]
        if min(rows) == 1024 and "prefill_s" in long:  # 1K prefill measured right before the 16K one
            r["prefill_16k_over_1k"] = long["prefill_s"] / long["prefill_s_at_reference"]
        out[variant] = r
    return out


def budget_ratios(budget: dict) -> dict:
    """tokens/s of each SambaY variant over the baseline's (None when the baseline fits no sequence)."""
    base = budget[BASELINE]["tokens_per_s"]
    return {v: budget[v]["tokens_per_s"] / base if base else None for v in ("sambay_da", "sambay")}


def goal_of(key: str) -> tuple[str, float] | None:
    """The goal of a ratio as (comparison, bound), or None for a ratio reported without one."""
    name, _, context = key.rpartition("_")
    if name == "decode_over_bytes_ratio" and context.isdigit() and int(context) in BYTES_GOAL_CONTEXTS:
        return "<=", GOALS["decode_over_bytes_ratio"]
    if key == "prefill_16k_over_1k":
        return "<=", GOALS["prefill_16k_over_1k"]
    return None


def _met(value: float | None, goal: tuple[str, float]) -> str:
    if value is None:
        return "-"
    comparison, bound = goal
    return "yes" if (value <= bound if comparison == "<=" else value >= bound) else "no"


def _ratio_order(key: str) -> tuple[str, int]:
    name, _, context = key.rpartition("_")
    return (name, int(context)) if context.isdigit() else (key, 0)


def _decode_table(report: dict) -> list[str]:
    lines = ["| context | model | decode ms/token | floor ms | decode / floor | prefill s | cache MiB (state) | "
             "allocated MiB | state / theory | MiB read per step (fewest) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for context, row in report["results"].items():
        for name, r in row.items():
            prefill = f"{r['prefill_s']:.2f}" if "prefill_s" in r else "-"
            lines.append(f"| {context} | {name} | {r['decode_ms']:.2f} | {r['floor_ms']:.2f} | "
                         f"{r['decode_ms'] / r['floor_ms']:.2f} | {prefill} | {r['cache_bytes'] / 2**20:.2f} | "
                         f"{r['cache_bytes_allocated'] / 2**20:.2f} | "
                         f"{r['cache_bytes'] / r['cache_bytes_theory']:.4f} | "
                         f"{r['bytes_read_per_step'] / 2**20:.1f} |")
    copy = ", ".join(f"{c}: {gb:.2f}" for c, gb in report["copy_gb_s"].items())
    return lines + ["", f"Copy bandwidth behind the floor (GB/s read + written, one thread, timed in the decode "
                        f"rounds of each context): {copy}."]


def _ratio_table(report: dict) -> list[str]:
    variants = list(report["ratios"])
    lines = ["| ratio | goal | " + " | ".join(variants) + f" | met ({' / '.join(variants)}) |",
             "|---|---:|" + "---:|" * len(variants) + "---|"]
    keys = sorted({k for r in report["ratios"].values() for k in r}, key=_ratio_order)
    for key in keys:
        goal = goal_of(key)
        values = [report["ratios"][v].get(key) for v in variants]
        shown = " | ".join("-" if x is None else f"{x:.3f}" for x in values)
        met = " / ".join(_met(x, goal) for x in values) if goal else ""
        lines.append(f"| {key} | {f'{goal[0]} {goal[1]}' if goal else ''} | {shown} | {met} |")
    return lines


def _budget_section(report: dict) -> list[str]:
    cfg, budget = report["config"], report["budget"]
    lines = [f"## Decode throughput in a {cfg['budget_gib']} GiB cache budget at {cfg['budget_context']} context "
             "(the paper's regime)", "",
             "Each model decodes as many sequences at once as fit the budget: floor(budget / cache state per "
             "sequence, counted when the last timed step is done); the steps of the three models are interleaved.", "",
             "| model | state MiB per sequence | sequences | state MiB (measured) | allocated MiB | ms per step | "
             "floor ms | tokens/s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in budget.items():
        step, floor = ("-" if r[k] is None else f"{r[k]:.1f}" for k in ("step_ms", "floor_ms"))
        lines.append(f"| {name} | {r['cache_bytes_per_sequence'] / 2**20:.2f} | {r['batch']} | "
                     f"{r['cache_bytes'] / 2**20:.1f} | {r['cache_bytes_allocated'] / 2**20:.1f} | {step} | {floor} | "
                     f"{r['tokens_per_s']:.2f} |")
    goal = (">=", GOALS["budget_tokens_per_s_ratio"])
    shown = ", ".join(f"{v} {'-' if x is None else f'{x:.2f}'} (met: {_met(x, goal)})"
                      for v, x in report["budget_ratios"].items())
    return lines + ["", f"Floor: the weights once and every sequence's states, at the copy bandwidth timed in these "
                        f"rounds ({report['budget_copy_gb_s']:.2f} GB/s).",
                    "", f"tokens/s over {BASELINE}: {shown}; goal {goal[0]} {goal[1]}."]


def _growth_lines(rows: dict) -> list[str]:
    contexts = sorted(rows)
    if len(contexts) < 2:
        return []
    a, b = contexts[0], contexts[-1]
    lines = ["", f"Cache growth between {a} and {b} tokens:"]
    for name in rows[a]:
        measured = (rows[b][name]["cache_bytes"] - rows[a][name]["cache_bytes"]) / (b - a)
        theory = (rows[b][name]["cache_bytes_theory"] - rows[a][name]["cache_bytes_theory"]) / (b - a)
        lines.append(f"- {name}: {measured:.0f} bytes per extra token (theory {theory:.0f})")
    return lines


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        "# bench_model: SambaY vs Transformer++ decode / prefill / cache (CPU, fp32, compute_backend=torch)",
        "",
        f"config: {', '.join(f'{k}={v}' for k, v in cfg.items())}; params: "
        + ", ".join(f"{n} {p:,}" for n, p in report["params"].items()),
        f"host: {report['host']} (absolute times move with the machine's load; the steps of the three models are "
        "interleaved, so the ratios are the figures to read)",
        "",
        "## Batch 1: decode against its fewest-bytes floor, prefill, cache",
        "",
        *_decode_table(report),
        "",
        *_ratio_table(report),
        *_growth_lines(report["results"]),
        "",
        *_budget_section(report),
        "",
        LIMITS,
    ]
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
    p.add_argument("--copy-mib", type=int, default=128,
                   help="MiB of the buffer whose copy gives the floor's bandwidth (default 128: well above the "
                        "32 MiB L3 a core of the development machine reaches)")
    p.add_argument("--budget-gib", type=float, default=1.0, help="cache-state budget of the throughput regime")
    p.add_argument("--budget-context", type=int, default=32768, help="context of the throughput regime")
    p.add_argument("--budget-steps", type=int, default=8, help="timed decode steps in the throughput regime")
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
