"""The prepared GPU check (issue 12 item 8, issue 14 item 6): one run of at most 8 minutes on a bare single-GPU
H100/H200 machine, started by ``scripts/gpu_check.sh`` (which installs the wheels of ``make gpu-wheels`` first).

Steps (each in a subprocess of its own with a time limit on GPU, so an out-of-memory or a hung kernel costs one
step, not the run):

- ``env``: device, versions, the compute backend ``auto`` resolves to, device-to-device copy bandwidth and a bf16
  matmul rate (the two ceilings the other figures are read against).
- ``pretrain``: bf16 (autocast, fp32 master weights) training steps of ``recipes/model/sambay_1b`` on packed rows
  (``doc_ids``): tokens/s, MFU counting attention FLOPs (``train.flops``), peak memory and the dtype the matmuls
  ran in (every aten matmul of one step, weighted by its FLOPs).
- ``sft``: one step (forward, backward, AdamW) on one 32,768-token row with activation checkpointing: peak memory.
  Phi-4-mini-flash itself where the GPU has >= 120 GB, else ``sambay_1b`` widths with its 200,064-token vocabulary.
- ``dpo``: a few steps of the sigmoid DPO loss (policy and frozen reference, chosen / rejected pairs).
- ``parity``: ``compute_backend="triton"`` against ``"torch"`` on packed rows, fp32 and bf16, logits and every
  parameter gradient (skipped with a message when the triton backend does not exist).
- ``scan_bandwidth``: the selective scan's achieved bandwidth (bytes it must read and write / time) against the
  copy bandwidth.
- ``decode``: decode tokens/s of SambaY and Transformer++ (same widths) at 32K context, bf16, batch 1.

These are the model and a plain PyTorch loop under ``torch.autocast``, not the DeepSpeed engine of ``train.pretrain``
(that needs prepared data shards; the engine's precision is tested on CPU in tests/train).

``--dry-run`` runs every step in-process on CPU at toy sizes (argument parsing, imports, configs, models, the output
files): what a CPU can check before the GPU time is spent.

    python -m bench.gpu_check --out bench/results/gpu_h200       # on the GPU machine (via scripts/gpu_check.sh)
    python -m bench.gpu_check --dry-run --out /tmp/gpu_dry
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import gpu_check_steps as steps  # noqa: E402

# Seconds per step on the GPU: together with the start of each subprocess they stay under 8 minutes.
STEP_LIMITS_S = {"env": 25, "pretrain": 100, "sft": 100, "dpo": 45, "parity": 50, "scan_bandwidth": 25, "decode": 60}


def run_step_in_process(name: str, dry_run: bool) -> dict:
    start = time.perf_counter()
    try:
        result = getattr(steps, name)(steps.sizes(dry_run))
        status = "skipped" if result.get("skipped") else "ok"
    except Exception as exc:  # a failed step is reported, the others still run
        result, status = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, "failed"
    return {"status": status, "seconds": round(time.perf_counter() - start, 2), **result}


def run_step_subprocess(name: str, limit_s: int, log) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.gpu_check", "--run-step", name, "--result", str(result_path)]
        start = time.perf_counter()
        try:
            subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=limit_s, check=False)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"step ran past its {limit_s} s limit",
                    "seconds": round(time.perf_counter() - start, 2)}
        if not result_path.exists():
            return {"status": "failed", "error": "the step's process died before writing a result (see the log)",
                    "seconds": round(time.perf_counter() - start, 2)}
        return json.loads(result_path.read_text())


def write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({'dry run on CPU, toy sizes' if report['dry_run'] else 'GPU'})", "",
             f"started {report['started']}, {report['seconds']:.0f} s", ""]
    for name, r in report["steps"].items():
        lines.append(f"## {name}: {r['status']} ({r.get('seconds', 0):.1f} s)")
        for key, value in r.items():
            if key not in ("status", "seconds", "traceback"):
                lines.append(f"- {key}: {json.dumps(value) if not isinstance(value, str) else value}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="output directory (default $OUT): gpu_check.json, gpu_check.md, gpu_check.log")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, every step in this process")
    p.add_argument("--steps", nargs="+", choices=list(STEP_LIMITS_S), default=list(STEP_LIMITS_S))
    p.add_argument("--force", action="store_true", help="overwrite an existing gpu_check.json in --out")
    p.add_argument("--run-step", choices=list(STEP_LIMITS_S), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_step:  # the child process of one GPU step
        args.result.write_text(json.dumps(run_step_in_process(args.run_step, dry_run=False), default=str))
        return 0
    if args.out is None:
        p.error("--out is required when $OUT is not set")
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.out / "gpu_check.json").exists() and not args.force:
        p.error(f"{args.out / 'gpu_check.json'} exists; pass --force to overwrite it")
    report = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "steps": {}}
    start = time.perf_counter()
    with open(args.out / "gpu_check.log", "w") as log:
        for name in args.steps:
            print(f"[gpu_check] {name} ...", file=log, flush=True)
            r = (run_step_in_process(name, dry_run=True) if args.dry_run
                 else run_step_subprocess(name, STEP_LIMITS_S[name], log))
            report["steps"][name] = r
            summary = {k: v for k, v in r.items() if k != "traceback"}
            print(f"[gpu_check] {name}: {json.dumps(summary, default=str)}", file=log, flush=True)
            print(f"[gpu_check] {name}: {r['status']} {r.get('error', '')}", flush=True)
    report["seconds"] = time.perf_counter() - start
    write_atomic(args.out / "gpu_check.json", json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(args.out / "gpu_check.md", markdown(report))
    print(markdown(report))
    return 0 if all(r["status"] != "failed" for r in report["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
