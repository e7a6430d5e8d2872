"""Pretraining-shard preparation at growing corpus sizes: peak memory of the whole process tree, tokens/s,
shard sizes, and the ratio to the tokenizer library alone on the same text and cores.

    python bench/bench_prepare.py [--sizes-mb 25 100 400] [--workers N] [--work-dir /tmp/sambay_bench_prepare]
                                  [--out bench/results/prepare_cpu.md] [--overwrite]

Corpora are synthetic JSONL written to ``--work-dir`` (never the repo): documents of log-normal length
(median ~2 KB) made of Zipf-distributed pseudo-words with punctuation, numbers and paragraph breaks, so BPE
merges and document boundaries behave like web text while the sizes can be chosen freely. A 4096-id BPE is
trained on the first 2 MB. Each measurement runs in a fresh child process; the parent samples the RSS of the
child and all its descendants (tokenizer workers) every 20 ms and reports the peak of their sum.
Baselines (same text, same cores, same child-process setup):
- "tokenizer alone": ``tokenizers.Tokenizer.encode_batch_fast`` over the texts already in memory with the
  library's own threads on every core (nothing read, nothing converted, nothing written), as one batch and in
  1 M-character batches; the faster of the two is the baseline;
- "in-process threads": the same pipeline with ``num_proc=1``, i.e. the library's threads instead of workers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.atomic import atomic_write_text  # noqa: E402  (after the sys.path line: the checkout, when not installed)
from data.documents import iter_documents  # noqa: E402
from data.tokenizer import train_bpe_tokenizer  # noqa: E402

SHARD_TOKENS = 1 << 24  # 32 MiB uint16 shards: several per corpus even at 100 MB

_PIPELINE = """
import json, sys, time
from data.documents import input_fingerprint, iter_documents
from data.pretrain_shards import write_pretrain_shards
from data.shards import read_manifest, tokenizer_info
corpus, tok, out, workers, shard_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
tokenizer_info(tok)  # imports transformers once, outside the timed region (the baseline loads its tokenizer untimed too)
t0 = time.perf_counter()
write_pretrain_shards(lambda s: iter_documents([corpus], "text", s), tok, out, [corpus], val_fraction=0.005,
                      num_proc=workers, shard_tokens=shard_tokens, input_id=input_fingerprint([corpus], "text"))
dt = time.perf_counter() - t0
m = read_manifest(out)
print(json.dumps({"seconds": dt, "tokens": sum(s["tokens"] for s in m["splits"].values()),
                  "shard_tokens": [sh["tokens"] for s in m["splits"].values() for sh in s["shards"]], "dtype": m["dtype"]}))
"""

_TOKENIZER_ALONE = """
import json, sys, time
from data.documents import iter_documents
from data.tokenize_pool import make_tokenizer
from data.tokenizer import backend_json
corpus, tok = sys.argv[1], sys.argv[2]
tk = make_tokenizer(backend_json(tok))
from data.pretrain_shards import chunk_texts
texts = list(iter_documents([corpus]))
t0 = time.perf_counter()
n = sum(len(e) for e in tk.encode_batch_fast(texts, add_special_tokens=False))
whole = time.perf_counter() - t0
t0 = time.perf_counter()  # the same in 1 M-character batches, as the pipeline feeds its workers
n2 = sum(len(e) for chunk in chunk_texts(texts) for e in tk.encode_batch_fast(chunk, add_special_tokens=False))
chunked = time.perf_counter() - t0
assert n == n2
print(json.dumps({"seconds": min(whole, chunked), "whole_batch_s": whole, "chunked_s": chunked, "tokens": n + len(texts)}))
"""


def make_corpus(path: Path, mb: int, seed: int = 0) -> Path:
    """Synthetic web-like JSONL of about ``mb`` MB (see module docstring); reused when present."""
    if path.exists() and abs(path.stat().st_size - mb * 1e6) < 0.05 * mb * 1e6:
        return path
    rng = np.random.default_rng(seed)
    syllables = ["ka", "to", "ri", "en", "th", "an", "qu", "is", "or", "de", "ma", "un", "st", "ion", "er", "al", "ch", "ou"]
    vocab = np.array(["".join(rng.choice(syllables, size=rng.integers(1, 5))) for _ in range(50_000)])
    zipf_p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    zipf_p /= zipf_p.sum()
    tmp = path.with_suffix(".tmp")
    written = 0
    with open(tmp, "w") as f:
        while written < mb * 1e6:
            n_words = int(min(20_000, rng.lognormal(np.log(350), 1.0))) + 1
            words = vocab[rng.choice(len(vocab), size=n_words, p=zipf_p)]
            seps = rng.choice([" ", " ", " ", " ", " ", ", ", ". ", ".\n\n", " 1984 ", " (", ") "], size=n_words)
            text = "".join(np.char.add(words, seps)).strip().capitalize()
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode())
    os.replace(tmp, path)
    return path


def run_measured(code: str, args: list[str], env_extra: dict | None = None) -> dict:
    """Run ``code`` in a child; return its JSON result plus ``peak_rss_mb`` of the whole process tree."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1", **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, env=env, cwd=REPO)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    out = proc.stdout.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"measured child failed ({proc.returncode}): {out[-2000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": peak / 2**20}


def train_tokenizer(corpus: Path, out: Path) -> Path:
    if (out / "tokenizer.json").is_file():
        return out

    def first_2mb():
        total = 0
        for t in iter_documents([corpus]):
            if total > 2_000_000:
                return
            total += len(t)
            yield t

    return train_bpe_tokenizer(first_2mb(), 4096, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[25, 100, 400])
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--work-dir", default="/tmp/sambay_bench_prepare")
    ap.add_argument("--out", default="bench/results/prepare_cpu.md")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = ap.parse_args()
    if Path(args.out).exists() and not args.overwrite:
        sys.exit(f"{args.out} exists; pass --overwrite to replace it")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    corpora = {mb: make_corpus(work / f"corpus_{mb}mb.jsonl", mb) for mb in args.sizes_mb}
    tok = train_tokenizer(corpora[min(corpora)], work / "tokenizer")
    rows = []
    for mb, corpus in corpora.items():
        out = work / f"shards_{mb}mb"
        shutil.rmtree(out, ignore_errors=True)
        r = run_measured(_PIPELINE, [str(corpus), str(tok), str(out), str(args.workers), str(SHARD_TOKENS)])
        shutil.rmtree(out, ignore_errors=True)
        rows.append((mb, corpus.stat().st_size, r))
        print(f"{mb} MB: {r['tokens'] / r['seconds'] / 1e6:.2f} M tokens/s, peak RSS {r['peak_rss_mb']:.0f} MiB", flush=True)
    alone, piped, threads = ratio_block(corpora[min(corpora)], tok, args.workers, work)
    text = report(rows, alone, piped, threads, args.workers, min(corpora))
    print(text, end="")
    atomic_write_text(args.out, text, overwrite=args.overwrite)


def ratio_block(corpus: Path, tok: Path, workers: int, work: Path, repeats: int = 2):
    """Tokenizer alone, the pipeline with workers and with in-process threads, back to back on one corpus,
    ``repeats`` rounds, best of each (the machine may be shared: adjacent runs see the same load)."""
    best: dict[str, dict] = {}
    out = work / "shards_ratio"
    for _ in range(repeats):
        for name, code, n in (("alone", _TOKENIZER_ALONE, None), ("piped", _PIPELINE, workers), ("threads", _PIPELINE, 1)):
            shutil.rmtree(out, ignore_errors=True)
            extra = [] if n is None else [str(out), str(n), str(SHARD_TOKENS)]
            r = run_measured(code, [str(corpus), str(tok), *extra], {"TOKENIZERS_PARALLELISM": "true"})
            if name not in best or r["tokens"] / r["seconds"] > best[name]["tokens"] / best[name]["seconds"]:
                best[name] = r
    shutil.rmtree(out, ignore_errors=True)
    return best["alone"], best["piped"], best["threads"]


def report(rows, alone, piped, threads, workers, small_mb) -> str:
    tps = lambda r: r["tokens"] / r["seconds"]  # noqa: E731
    lines = [f"# bench_prepare on {platform.machine()} / {os.cpu_count()} CPU cores, python {platform.python_version()}",
             "", f"`data.pretrain_shards.write_pretrain_shards`, num_proc={workers} worker processes, shard_tokens={SHARD_TOKENS}, "
             "synthetic JSONL corpora (see bench/bench_prepare.py). Peak RSS = whole process tree (parent + workers).", "",
             "| corpus | tokens | seconds | M tokens/s | peak RSS (MiB) | shards | shard size min / max (MiB) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for mb, size, r in rows:
        item = np.dtype(r["dtype"]).itemsize
        sizes = [t * item / 2**20 for t in r["shard_tokens"]]
        lines.append(f"| {size / 1e6:.0f} MB | {r['tokens'] / 1e6:.1f} M | {r['seconds']:.1f} | {tps(r) / 1e6:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {len(sizes)} | {min(sizes):.1f} / {max(sizes):.1f} |")
    peaks = [r["peak_rss_mb"] for _, _, r in rows]
    lines += ["", f"- peak memory largest / smallest corpus: {max(peaks) / min(peaks):.2f}x "
              f"(corpus {rows[-1][1] / rows[0][1]:.0f}x larger)",
              f"- back to back on the {small_mb} MB corpus (best of 2 rounds each):",
              f"  - tokenizer library alone (encode_batch_fast, its own threads on all cores, texts in memory; faster of "
              f"one batch {alone['whole_batch_s']:.1f} s and 1 M-char batches {alone['chunked_s']:.1f} s): "
              f"{tps(alone) / 1e6:.2f} M tokens/s, peak RSS {alone['peak_rss_mb']:.0f} MiB",
              f"  - pipeline, {workers} workers: {tps(piped) / 1e6:.2f} M tokens/s, peak RSS {piped['peak_rss_mb']:.0f} MiB",
              f"  - **ratio pipeline ({workers} workers) / tokenizer alone: {tps(piped) / tps(alone):.2f}**",
              f"  - pipeline with num_proc=1 (the library's threads in-process, no workers): {tps(threads) / 1e6:.2f} M tokens/s "
              f"= {tps(threads) / tps(alone):.2f}x tokenizer alone, peak RSS {threads['peak_rss_mb']:.0f} MiB", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
