"""Data-pipeline throughput, each figure against a baseline measured in the same process.

    python bench/bench_data.py [--data artifacts/data/demo] [--chars 3000000] [--out bench/results/data_cpu.txt]

1. Tokenization: the shard writer (``data.pretrain_shards.write_pretrain_shards``: streaming chunks + EOS + split +
   shard files, in-process, one thread) vs calling the tokenizer library directly on the same texts (one
   thread); tokens/s per core. Multi-core scaling and memory at scale: ``bench/bench_prepare.py``.
2. Loading: ``PackedLoader`` tokens/s (pretraining packing and SFT packing) vs what training consumes, for an
   assumed step rate stated in the output.
Needs the demo data (``python -m data.prepare --config-name demo``).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread: a per-core figure
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.atomic import atomic_write_text  # noqa: E402  (after the sys.path line: the checkout, when not installed)
from data.corpus import collect_corpus  # noqa: E402
from data.layout import DEFAULT_DATA_DIR, PreparedData  # noqa: E402
from data.loader import PackedLoader  # noqa: E402
from data.pretrain_shards import write_pretrain_shards  # noqa: E402
from data.tokenizer import load_tokenizer  # noqa: E402

# Assumed consumption, stated in the output. CPU demo: 16 rows x 256 tokens per optimizer step at 2 steps/s
# (faster than the ~1M-parameter demo model trains on 2 cores). GPU: one H100 training a ~1B model at
# ~40% MFU consumes roughly 50k tokens/s (6 * 1e9 FLOP/token, 1e15 * 0.4 / 6e9 ~ 67k).
CPU_DEMO_TOKENS_PER_S = 16 * 256 * 2
H100_1B_TOKENS_PER_S = 67_000


def _time(fn, min_s: float = 1.0):
    """Run ``fn`` until ``min_s`` elapsed (at least twice); return (result of last call, seconds per call)."""
    fn()  # warm up (imports, page cache)
    # CPU time of this process, not wall time: every figure is per core, and on a shared machine wall time
    # mostly measures the other jobs. Everything timed here runs in this process on one thread.
    n, t0 = 0, time.process_time()
    while True:
        out = fn()
        n += 1
        dt = time.process_time() - t0
        if dt >= min_s and n >= 2:
            return out, dt / n


def bench_tokenization(data: PreparedData, chars: int) -> list[str]:
    tok_dir = data.tokenizer
    docs = collect_corpus(["python3.11-doc"], False, "artifacts/cache/corpus")
    texts, total = [], 0
    for d in docs:
        texts.append(d.text)
        total += len(d.text)
        if total >= chars:
            break
    tok = load_tokenizer(tok_dir)

    def direct():
        return sum(len(x) for x in tok(texts, add_special_tokens=False)["input_ids"])

    n_tokens, t_direct = _time(direct, 2.0)
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**6))

        def writer():
            write_pretrain_shards(texts, tok_dir, Path(tmp) / f"s{next(runs)}", ["bench"], val_fraction=0.01, num_proc=1)

        _, t_writer = _time(writer, 2.0)
    direct_tps, writer_tps = n_tokens / t_direct, (n_tokens + len(texts)) / t_writer
    return [
        f"tokenization ({len(texts)} docs, {total / 1e6:.2f} M chars, {n_tokens / 1e6:.2f} M tokens, BPE vocab {len(tok)})",
        f"  tokenizer library directly (1 thread):   {direct_tps / 1e3:9.1f} k tokens/s per core",
        f"  shard writer (streaming, 1 process):     {writer_tps / 1e3:9.1f} k tokens/s per core",
        f"  ratio writer / direct:                   {writer_tps / direct_tps:9.3f}",
    ]


def bench_loader(data: PreparedData) -> list[str]:
    lines = ["loading (PackedLoader, np.memmap shards; 1 rank)"]
    cases = [("pretrain", [(data.pretrain, 1.0)], True, 256, 16),
             ("pretrain", [(data.pretrain, 1.0)], True, 2048, 8),
             ("sft math", [(data.sft_shards("math"), 1.0)], False, 256, 16),
             ("mixture basic+math", [(data.sft_shards("basic"), 1.0), (data.sft_shards("math"), 2.0)], False, 256, 16)]
    for name, sources, split_docs, seq_len, rows in cases:
        loader = PackedLoader(sources, seq_len=seq_len, global_batch_rows=rows, split_documents=split_docs)

        def step():
            return loader.next_batch()

        _, dt = _time(step, 1.0)
        tps = seq_len * rows / dt
        lines.append(f"  {name:20s} seq_len {seq_len:5d} x {rows:2d} rows: {tps / 1e6:7.2f} M tokens/s "
                     f"= {tps / CPU_DEMO_TOKENS_PER_S:8.1f}x the CPU demo's need, "
                     f"{tps / H100_1B_TOKENS_PER_S:6.1f}x one H100 on a 1B model")
    lines.append(f"  assumed needs: CPU demo {CPU_DEMO_TOKENS_PER_S} tokens/s (16 rows x 256 tokens x 2 steps/s); "
                 f"H100 1B model ~{H100_1B_TOKENS_PER_S} tokens/s (40% MFU)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA_DIR)
    ap.add_argument("--chars", type=int, default=3_000_000, help="corpus characters to tokenize")
    ap.add_argument("--out", default="bench/results/data_cpu.txt")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = ap.parse_args()
    data = PreparedData(args.data)
    if not data.done.exists():
        sys.exit(f"{data.root}: no complete demo data; run `python -m data.prepare --config-name demo` first")
    if Path(args.out).exists() and not args.overwrite:
        sys.exit(f"{args.out} exists; pass --overwrite to replace it")
    lines = [f"bench_data on {platform.machine()} / {os.cpu_count()} CPU cores, python {platform.python_version()}",
             f"data: {data.root}", ""]
    lines += bench_tokenization(data, args.chars) + [""] + bench_loader(data)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    atomic_write_text(args.out, text, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
