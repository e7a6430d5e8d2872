"""The prepared GPU check (issue 12 item 8, issue 14 item 6, issue 20 item 7): one run of at most 8 minutes on a
bare single-GPU H100/H200 machine with no package registry, started by ``scripts/gpu_check.sh`` (which first installs
the wheels that ``make gpu-wheels`` prepared).

Parts, cheapest and most telling first, each with its own time limit and in a process of its own (for the stage
parts: the entry point they launch), so an out-of-memory, a hung kernel or a failed run costs that part, not the
check; a part whose input is missing says so and is skipped:

- ``env``: every module the check runs imports, every carried wheel's declared requirements (and pyproject's) hold
  for the installed versions (bench/gpu_check_imports.py); when not, the check stops here, in seconds, with the
  list (``--keep-going`` runs the rest anyway). Then device, versions, the backend ``auto`` resolves to, and the
  two ceilings (device-to-device copy bandwidth, bf16 matmul rate).
- ``kernels``: the Triton scan and conv against the PyTorch reference at sambay_1b's widths, forward and every
  gradient, fp32 and bf16, with resets (chunk edges, first and last token, two in a row) and initial states.
- ``scan_bandwidth``: the scan's forward and forward + backward bytes / time against the copy bandwidth (goal for
  forward + backward: >= 0.5).
- ``flex``: FlexAttention against fp32 PyTorch attention in bf16 (sliding-window and full masks on packed rows).
- ``data``: ``python -m data.prepare --config-name demo`` on a synthetic corpus made here, with the Phi-4-mini
  tokenizer (vocab 200,064, the real recipes' tokenizer): pretraining shards, a 32K-packable SFT set, preference
  pairs.
- ``pretrain``: ``torchrun -m train.pretrain --config-name sambay_1b`` (ZeRO-2, ``deepspeed.precision=bf16``,
  ``model.compute_backend=triton``, packed rows with document ids), 8 optimizer steps, no final checkpoint:
  tokens/s and MFU from its ``metrics.jsonl`` (train/engine/flops.py's count, attention FLOPs included; goal >= 40%), read
  even when the run overruns its limit; the dtype the matmuls ran in and the peak memory from
  bench/gpu_check_probe.py.
- ``sft``: one step of ``torchrun -m train.sft --config-name phi4_mini_flash_reasoning`` (its 32,768-token stage,
  ZeRO-3) from the pretrain export: peak memory.
- ``dpo``: a few steps of ``torchrun -m train.dpo --config-name gpu`` (TRL, ZeRO-2, bf16, frozen reference).
- ``decode``: decode tokens/s, SambaY vs Transformer++ (sambay_1b widths, bf16) at 32K context, when time is left.

Every part runs with ``TORCH_LOGS=recompiles`` into a file of its own; ``<stem>_recompiles.log`` collects them and
each part's result counts its recompiles. Compile time per part: torch.compile's own (``compile`` in the parts
that compile, from dynamo's metrics), the Triton kernels' first-call seconds, and for the stages an estimate from
the first logged window's excess over the steady ones.

Results: ``<out>/gpu_check.json`` and ``gpu_check.md`` (rewritten atomically after every part, so a hard stop
leaves what was measured), ``gpu_check.log`` (every part's output), ``gpu_check_recompiles.log``. ``--dry-run`` runs
every part on CPU at toy sizes through the same entry points and model calls (the triton parts under
``TRITON_INTERPRET=1``) and writes ``gpu_check_dryrun.*``.

    scripts/gpu_check.sh --out "$OUT"            # on the GPU machine
    scripts/gpu_check.sh --dry-run --out /tmp/g  # here
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import gpu_check_report as report  # noqa: E402
from bench.gpu_check_run import StageFailed, child_env, recompile_log  # noqa: E402


@dataclass(frozen=True)
class Part:
    """One part: where its function lives, its limits (GPU / dry run), whether it needs Triton's interpreter on CPU,
    and whether it runs in a process of its own. The training-stage parts run in the driver: they only launch an
    entry point (a subprocess with the part's limit as its timeout) and read its files, and a child would spend
    seconds of the budget importing torch again."""

    module: str
    gpu_limit_s: int
    dry_limit_s: int
    interpret_on_cpu: bool = False
    own_process: bool = True


# GPU limits add up to 435 s; with the wheel install the whole check stays under scripts/gpu_check.sh's 480 s.
# The order is the order they run in: a hard stop loses the last ones.
STEPS, KERNELS, STAGES = "bench.gpu_check_steps", "bench.gpu_check_kernels", "bench.gpu_check_stages"
PARTS = {
    "env": Part(STEPS, gpu_limit_s=25, dry_limit_s=180),
    "kernels": Part(KERNELS, gpu_limit_s=45, dry_limit_s=400, interpret_on_cpu=True),
    "scan_bandwidth": Part(KERNELS, gpu_limit_s=25, dry_limit_s=120, interpret_on_cpu=True),
    "flex": Part(KERNELS, gpu_limit_s=40, dry_limit_s=120, interpret_on_cpu=True),
    "data": Part(STAGES, gpu_limit_s=40, dry_limit_s=120, own_process=False),
    "pretrain": Part(STAGES, gpu_limit_s=120, dry_limit_s=300, own_process=False),
    "sft": Part(STAGES, gpu_limit_s=55, dry_limit_s=300, own_process=False),
    "dpo": Part(STAGES, gpu_limit_s=60, dry_limit_s=300, own_process=False),
    "decode": Part(STEPS, gpu_limit_s=25, dry_limit_s=120),
}
GATE = "env"  # a part whose failure stops the check (unless --keep-going): nothing after it can run
GPU_DEADLINE_S = 440  # from the driver's start: every part's limit is cut to what is left of it
GRACE_S = 15  # after a part's limit: its process writes the result of a timed-out inner run, then is killed


def run_part_here(name: str, work: Path, limit_s: float, dry_run: bool) -> dict:
    """Run one part in this process (a part's own child, or the driver for the stage parts): call its function and
    turn an exception into a failed result."""
    import importlib

    from bench.gpu_check_sizes import sizes

    start = time.perf_counter()
    try:
        fn = getattr(importlib.import_module(PARTS[name].module), name)
        result = fn(sizes(dry_run), work, limit_s)
        status = "skipped" if "skipped" in result else "ok"
    except StageFailed as exc:  # what the run measured before it failed is reported with the failure
        result = {**exc.figures, "error": f"{type(exc).__name__}: {exc}"}
        status = "failed"
    except Exception as exc:  # a failed part is reported; the others still run
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        status = "failed"
    if "error" in result:
        status = "failed"
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), "limit_s": round(limit_s), **result}


def run_part_subprocess(name: str, work: Path, limit_s: float, dry_run: bool, log) -> dict:
    result_path = work / f"result_{name}.json"
    cmd = [sys.executable, "-m", "bench.gpu_check", "--run-part", name, "--result", str(result_path),
           "--work", str(work), "--limit-s", str(limit_s)] + (["--dry-run"] if dry_run else [])
    env = child_env(work, name)
    if dry_run and PARTS[name].interpret_on_cpu:
        env["TRITON_INTERPRET"] = "1"  # before the child imports triton (sambay_model imports it via torch)
    start = time.perf_counter()
    try:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit_s + GRACE_S,
                       check=False)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"ran past its {limit_s:.0f} s limit",
                "seconds": round(time.perf_counter() - start, 1), "limit_s": round(limit_s)}
    if not result_path.is_file():
        return {"status": "failed", "error": "the part's process died before writing a result (see the log)",
                "seconds": round(time.perf_counter() - start, 1), "limit_s": round(limit_s)}
    return json.loads(result_path.read_text())


def default_work_root(dry_run: bool) -> Path:
    """Where runs and data go: RAM (/dev/shm) on the GPU machine when it has room for a 1B checkpoint (~17 GB,
    written three times), else /tmp."""
    shm = Path("/dev/shm")
    if not dry_run and shm.is_dir() and shutil.disk_usage(shm).free >= 48 * 2**30:
        return shm
    return Path(tempfile.gettempdir())


def append_stage_log(log, work: Path, name: str, max_chars: int = 200_000) -> None:
    """Copy a stage's own log (the entry point's output) into the check's log: the work dir does not come back."""
    stage_log = work / f"{name}.log"
    if stage_log.is_file():
        text = stage_log.read_text(errors="replace")
        cut = len(text) > max_chars
        log.write(f"----- {stage_log.name}{' (last %d characters)' % max_chars if cut else ''} -----\n")
        log.write(text[-max_chars:] + "\n")
        log.flush()


def fold_recompiles(work: Path, name: str, out_log: Path) -> dict:
    """Append the part's recompile log to ``out_log`` (the work dir does not come back); count its recompiles and
    the times dynamo's recompile limit was hit (after which FlexAttention runs eagerly, materialising the scores)."""
    path = recompile_log(work, name)
    text = path.read_text(errors="replace") if path.is_file() else ""
    with open(out_log, "a") as f:
        f.write(f"----- {name} -----\n{text}")
    return {"recompiles": text.count("Recompiling function"),
            "recompile_limit_hits": text.count("recompile_limit") + text.count("cache_size_limit")}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench" / "results"
    p.add_argument("--out", type=Path, default=default_out,
                   help="directory of gpu_check.{json,md,log} (default $OUT when set, else bench/results)")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, the same entry points and model calls")
    p.add_argument("--steps", nargs="+", choices=list(PARTS), default=list(PARTS), help="the parts to run, in order")
    p.add_argument("--force", action="store_true", help="overwrite an existing result in --out")
    p.add_argument("--keep-going", action="store_true",
                   help=f"run the other parts even when {GATE!r} fails (imports or requirements off)")
    p.add_argument("--work", type=Path, default=None, help="scratch dir for data and runs (default: a new temp dir)")
    p.add_argument("--keep-work", action="store_true",
                   help="leave the temp scratch dir in place (a --work dir is always left)")
    p.add_argument("--run-part", choices=list(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--limit-s", type=float, help=argparse.SUPPRESS)
    return p, p.parse_args(argv)


def part_limit(name: str, dry_run: bool, elapsed_s: float) -> float:
    return PARTS[name].dry_limit_s if dry_run else min(PARTS[name].gpu_limit_s, GPU_DEADLINE_S - elapsed_s)


def run_parts(args, work: Path, stem: str, results: dict) -> None:
    """Run ``args.steps`` in order, writing the results after each; after a failed :data:`GATE` the rest are
    skipped with its reason (unless ``--keep-going``)."""
    start = time.perf_counter()
    recompiles = args.out / f"{stem}_recompiles.log"
    recompiles.write_text("")
    stop = None
    with open(args.out / f"{stem}.log", "w") as log:
        for name in args.steps:
            limit = part_limit(name, args.dry_run, time.perf_counter() - start)
            if stop or limit < 5:
                r = {"status": "skipped", "skipped": stop or "no time left in the check's budget", "seconds": 0.0}
            else:
                print(f"[gpu_check] ===== {name} (limit {limit:.0f} s) =====", file=log, flush=True)
                r = (run_part_subprocess(name, work, limit, args.dry_run, log) if PARTS[name].own_process
                     else run_part_here(name, work, limit, args.dry_run))
                append_stage_log(log, work, name)
                r.update(fold_recompiles(work, name, recompiles))
                if name == GATE and r["status"] == "failed" and not args.keep_going:
                    stop = f"{GATE} failed: the environment cannot run the stages (--keep-going runs them anyway)"
            results["steps"][name] = r
            results["seconds"] = round(time.perf_counter() - start, 1)
            print(f"[gpu_check] {name}: {r['status']} in {r.get('seconds', 0):.0f} s {r.get('error', '')[:300]}",
                  flush=True)
            report.write(args.out, stem, results)


def main(argv=None) -> int:
    p, args = parse_args(argv)
    if args.run_part:  # the child process of one part
        result = run_part_here(args.run_part, args.work, args.limit_s, args.dry_run)
        report.write_atomic(args.result, json.dumps(result, default=str))
        return 0
    stem = "gpu_check_dryrun" if args.dry_run else "gpu_check"
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.out / f"{stem}.json").exists() and not args.force:
        p.error(f"{args.out / (stem + '.json')} exists; pass --force to overwrite it")
    work = args.work or Path(tempfile.mkdtemp(prefix="sambay_gpu_check_", dir=default_work_root(args.dry_run)))
    work.mkdir(parents=True, exist_ok=True)
    results = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "work": str(work), "steps": {}}
    run_parts(args, work, stem, results)
    if args.work is None and not args.keep_work:  # only the scratch dir this run made
        shutil.rmtree(work, ignore_errors=True)
    print(report.summary(results))
    return 0 if all(r["status"] != "failed" for r in results["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
