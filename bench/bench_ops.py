"""CPU benchmark of sambay_model.ops against naive baselines measured in the same process.

1. selective scan: our autograd.Function vs the naive per-token autograd loop (``reference.selective_scan_ref``
   in fp32) on the same inputs, forward and forward+backward, B=4, D=512, N=16, T in {512, 2048}, plus the
   CPU demo model's shape (B=8, D=256, T=512).
2. sliding-window attention (window 512): our blockwise path vs one SDPA call with the full [T, T] mask,
   forward, B=1, 2 heads, head dim 64, T in {4096, 16384}.

Prints times and speed-up ratios and writes them to bench/results/ops_cpu.txt (``--out`` to change; an existing
file is replaced atomically). Timings on a shared machine are noisy: ours is the best of ``--repeats`` runs, the
slow baselines run once.

    python bench/bench_ops.py [--quick] [--out PATH]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sambay_model.ops import attention  # noqa: E402
from sambay_model.ops.attention import build_mask  # noqa: E402
from sambay_model.ops.selective_scan import selective_scan_torch  # noqa: E402
from tests.sambay_model.reference_ops import selective_scan_ref  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def scan_inputs(T: int, Bsz=4, Dch=512, N=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    tensors = dict(u=r(Bsz, Dch, T), delta=r(Bsz, Dch, T) - 2.0, A=-torch.exp(r(Dch, N) * 0.5), B=r(Bsz, N, T),
                   C=r(Bsz, N, T), D=r(Dch))
    resets = torch.rand(Bsz, T, generator=g) < 1.0 / 256  # packed rows: a document start every ~256 tokens
    return {k: v.requires_grad_() for k, v in tensors.items()}, resets


def bench_scan(T: int, repeats: int, log, Bsz: int = 4, Dch: int = 512) -> None:
    inputs, resets = scan_inputs(T, Bsz=Bsz, Dch=Dch)
    leaves = list(inputs.values())

    def fwd(fn):
        with torch.no_grad():
            return fn(**inputs, resets=resets)

    def fwd_bwd(fn):
        y = fn(**inputs, resets=resets)
        return torch.autograd.grad(y.square().mean(), leaves)

    ours = selective_scan_torch
    naive = lambda **kw: selective_scan_ref(**kw, dtype=torch.float32)  # noqa: E731
    t_ours_f, y_ours = timed(lambda: fwd(ours), repeats)
    t_naive_f, y_naive = timed(lambda: fwd(naive), 1)
    t_ours_fb, g_ours = timed(lambda: fwd_bwd(ours), repeats)
    t_naive_fb, g_naive = timed(lambda: fwd_bwd(naive), 1)
    err_y = ((y_ours - y_naive).abs().max() / y_naive.abs().max()).item()
    err_g = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(g_ours, g_naive))
    log(f"scan B={Bsz} D={Dch} T={T:5d}  fwd: ours {t_ours_f:7.3f}s naive {t_naive_f:7.3f}s"
        f" ratio {t_naive_f / t_ours_f:6.1f}x"
        f" | fwd+bwd: ours {t_ours_fb:7.3f}s naive {t_naive_fb:7.3f}s ratio {t_naive_fb / t_ours_fb:6.1f}x"
        f" | max rel diff y {err_y:.1e} grads {err_g:.1e}")


def bench_window_attention(T: int, window: int, repeats: int, log) -> None:
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(1, 2, T, 64, generator=g) for _ in range(3))
    pos = torch.arange(T)

    def full_mask():
        mask = build_mask(pos, pos, causal=True, window=window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    with torch.no_grad():
        t_ours, out = timed(lambda: attention(q, k, v, window=window, backend="torch"), repeats)
        t_full, ref = timed(full_mask, 1)
    err = (out - ref).abs().max().item()
    log(f"swa  T={T:5d} w={window}  blockwise {t_ours:7.3f}s  full-mask SDPA {t_full:7.3f}s"
        f"  ratio {t_full / t_ours:6.1f}x  | mask bytes full {T * T / 2**20:.0f} MiB vs per block "
        f"{window * (2 * window - 1) / 2**20:.2f} MiB | max abs diff {err:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (T=512 scan, T=4096 attention only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ops_cpu.txt")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    log(f"bench_ops: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    log("scan: N=16 fp32, resets every ~256 tokens; naive = per-token autograd loop")
    for T in (512,) if args.quick else (512, 2048):
        bench_scan(T, args.repeats, log)
    bench_scan(512, args.repeats, log, Bsz=8, Dch=256)  # the CPU demo model's Mamba shape (hidden 128)
    log("sliding-window attention: B=1 H=2 d=64 fp32, forward")
    for T in (4096,) if args.quick else (4096, 16384):
        bench_window_attention(T, 512, args.repeats, log)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=".ops_cpu.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
