"""Static report of the Triton kernels in ``sambay_model/ops``, compiled for an H100 (sm_90) on this machine: no GPU.

Every ops module that defines ``kernel_launches(shape)`` hands over its forward and backward launches built on
``meta`` tensors at ``KernelShape``'s defaults (Phi-4-mini-flash's Mamba layer: batch 1, T 8192, d_inner 5120,
d_state 16, bf16 inputs), with the strides the model passes. Each launch is specialised as Triton's JIT would
specialise it at run time (its own binder: pointer and int divisibility by 16, ints equal to 1 as constexprs),
compiled with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` by the ptxas inside the triton wheel, and read
back with the ``cuobjdump`` beside it. Per kernel it gives registers, spill bytes, grid size (``programs``), the
longest time loop a program runs (``serial_steps``, declared by the launch), block-wide barriers per time step
(read from the SASS) and an occupancy estimate; ``DEFINITIONS`` below (also written into the report) says
exactly what each column counts and what the report cannot tell: these are counts, not times.

    python -m bench.kernel_report [--json] [--out PATH]
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import math
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sambay_model.ops.kernel_launch import KernelLaunch, KernelShape  # noqa: E402

OPS_DIR = REPO / "sambay_model" / "ops"
DEFAULT_OUT = REPO / "bench" / "results" / "kernel_report.md"
TARGET = GPUTarget("cuda", 90, 32)
JSON_KEYS = ("kernel", "registers", "spill_bytes", "programs", "serial_steps", "barriers_per_step")
# H100 SXM (sm_90) per-SM limits, for the resident-programs estimate.
SMS = 132
REGS_PER_SM = 65536
REG_ALLOC_PER_WARP = 256
MAX_WARPS_PER_SM = 64
MAX_PROGRAMS_PER_SM = 32
SHARED_PER_SM = 228 * 1024
SHARED_RESERVED_PER_PROGRAM = 1024
BARRIER = re.compile(r"(^|\s)BAR\.(SYNC|RED)\b")  # block-wide waits (BAR.ARV only signals)


@dataclass(frozen=True)
class KernelRow:
    kernel: str
    phase: str
    registers: int
    spill_bytes: int
    programs: int
    serial_steps: int
    barriers_per_step: int
    barriers_total: int
    instructions_per_step: int
    num_warps: int
    shared_bytes: int
    resident_programs_per_sm: int

    def as_json(self) -> dict:
        return {k: getattr(self, k) for k in JSON_KEYS}


def launch_modules() -> list:
    """Every ``sambay_model.ops`` module that defines ``kernel_launches`` at its top level."""
    found = []
    for path in sorted(OPS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "kernel_launches" for n in tree.body):
            found.append(importlib.import_module(f"sambay_model.ops.{path.stem}"))
    return found


def compile_sm90(launch: KernelLaunch):
    """The launch compiled for sm_90 with the specialisation the JIT applies to these arguments."""
    kernel = launch.kernel
    backend = make_backend(TARGET)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.options, debug=False)
    bound, specialization, options = binder(*launch.args, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")  # the JIT's default is what we want
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
        return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=TARGET,
                              options=options.__dict__)


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        return subprocess.run([_tool("cuobjdump"), flag, str(path)], check=True, capture_output=True,
                              text=True).stdout


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL of the cubin's one function, from ``cuobjdump --dump-resource-usage``."""
    text = _cuobjdump(cubin, "--dump-resource-usage")
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    if set(found) != {"REG", "STACK", "SHARED", "LOCAL"}:
        raise RuntimeError(f"cuobjdump --dump-resource-usage: no REG/STACK/SHARED/LOCAL in:\n{text}")
    return {k: int(v) for k, v in found.items()}


def sass(cubin: bytes) -> list[tuple[int, str]]:
    """(address, instruction) of every SASS instruction, from ``cuobjdump -sass``."""
    pattern = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
    return [(int(m.group(1), 16), m.group(2)) for m in map(pattern.search, _cuobjdump(cubin, "-sass").splitlines())
            if m]


def outer_loops(code: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(first, last) addresses of each outermost loop: a branch to an earlier address closes a loop body
    (the trailing ``BRA`` to itself after ``EXIT`` is no loop)."""
    spans = []
    for addr, text in code:
        m = re.search(r"\bBRA\s+(?:`\()?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            spans.append((int(m.group(1), 16), addr))
    return [s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans)]


def step_counts(code: list[tuple[int, str]], serial_steps: int) -> tuple[int, int]:
    """(barriers, instructions) of one time step: the outermost loop with most barriers; the whole kernel when it
    has no time loop (``serial_steps`` 1), or the whole kernel shared out when the compiler unrolled it."""
    def counts(lo: int, hi: int) -> tuple[int, int]:
        body = [text for addr, text in code if lo <= addr <= hi]
        return sum(1 for text in body if BARRIER.search(text)), len(body)

    whole = counts(code[0][0], code[-1][0])
    if serial_steps == 1:
        return whole
    spans = outer_loops(code)
    if not spans:
        return math.ceil(whole[0] / serial_steps), math.ceil(whole[1] / serial_steps)
    return max(counts(lo, hi) for lo, hi in spans)


def resident_programs(registers: int, num_warps: int, shared: int) -> int:
    """Programs one SM can hold at once (estimate: register file, warp slots, shared memory, block slots)."""
    per_warp = math.ceil(registers * 32 / REG_ALLOC_PER_WARP) * REG_ALLOC_PER_WARP
    by_regs = (REGS_PER_SM // per_warp) // num_warps
    by_smem = SHARED_PER_SM // (shared + SHARED_RESERVED_PER_PROGRAM)
    return min(by_regs, MAX_WARPS_PER_SM // num_warps, by_smem, MAX_PROGRAMS_PER_SM)


def analyse(launch: KernelLaunch) -> KernelRow:
    compiled = compile_sm90(launch)
    cubin = compiled.asm["cubin"]
    usage = resource_usage(cubin)
    code = sass(cubin)
    barriers, instructions = step_counts(code, launch.serial_steps)
    total = sum(1 for _, text in code if BARRIER.search(text))
    warps = compiled.metadata.num_warps
    shared = max(usage["SHARED"], compiled.metadata.shared)
    return KernelRow(launch.name, launch.phase, usage["REG"], usage["STACK"] + usage["LOCAL"], launch.programs,
                     launch.serial_steps, barriers, total, instructions, warps, shared,
                     resident_programs(usage["REG"], warps, shared))


def report(shape: KernelShape | None = None) -> list[KernelRow]:
    shape = shape or KernelShape()
    return [analyse(launch) for module in launch_modules() for launch in module.kernel_launches(shape)]


def _ptxas_version() -> str:
    out = subprocess.run([_tool("ptxas"), "--version"], check=True, capture_output=True, text=True).stdout
    return next((line for line in out.splitlines() if "release" in line), out.strip().splitlines()[-1])


TABLE_COLUMNS = (
    ("kernel", lambda r: r.kernel), ("phase", lambda r: r.phase), ("registers", lambda r: r.registers),
    ("spill_bytes", lambda r: r.spill_bytes), ("programs", lambda r: r.programs),
    ("programs / SM", lambda r: f"{r.programs / SMS:.1f}"), ("serial_steps", lambda r: r.serial_steps),
    ("barriers_per_step", lambda r: r.barriers_per_step), ("barriers, whole kernel", lambda r: r.barriers_total),
    ("SASS instructions per step", lambda r: r.instructions_per_step), ("warps", lambda r: r.num_warps),
    ("shared bytes", lambda r: r.shared_bytes),
    ("resident programs / SM (estimate)", lambda r: r.resident_programs_per_sm),
    ("waves (estimate)", lambda r: f"{r.programs / (SMS * max(r.resident_programs_per_sm, 1)):.1f}"),
)


DEFINITIONS = [
    "## What the columns count",
    "",
    "- `registers`, `shared bytes`: per thread / per program, from `cuobjdump --dump-resource-usage` of the cubin.",
    "- `spill_bytes`: the per-thread stack frame plus local memory from the same dump; Triton kernels keep no local",
    "  arrays, so any stack is register spill.",
    f"- `programs`: the launch grid at this shape; `programs / SM` divides it by the H100's {SMS} SMs.",
    "- `serial_steps`: the longest loop over the time axis that one program runs (declared by the launch: tiles or",
    "  chunks walked one after another; 1 for a kernel without a time loop).",
    "- `barriers_per_step`: `BAR.SYNC` and `BAR.RED` instructions (block-wide waits) in the SASS body of the time",
    "  loop, taken as the outermost loop (from a backward branch's target to the branch; with several outermost",
    "  loops, the one with most barriers; an inner loop's barriers count once, not per trip). A kernel with no",
    "  time loop (`serial_steps` 1) counts the whole kernel: its one step is the program (loops it has over other",
    "  axes included); a time loop the compiler unrolled shares the whole kernel's count out over its steps.",
    "  `SASS instructions per step` counts the same span.",
    "- `resident programs / SM`: min over the register file (65,536 per SM, allocated per warp in units of 256),",
    "  64 warp slots, 228 KiB shared memory (1 KiB reserved per program) and 32 program slots; `waves` = programs /",
    "  (SMs x resident programs).",
    "",
    "## What it cannot tell",
    "",
    "- These are counts from the compiled code, not times: nothing here ran on a GPU.",
    "- Memory timing is not modelled: DRAM bandwidth, latency, L1/L2 hit rates, load pipelining and coalescing",
    "  efficiency are absent, so a kernel with few instructions can still wait on memory.",
    "- Occupancy is estimated from registers, warps and shared memory only; the real scheduler, tail effects",
    "  and how many warps it takes to hide latency are not modelled.",
    "- A barrier's cost depends on how long the slowest warp takes to reach it; only the number is counted.",
    "- Counts come from this machine's Triton and ptxas; the GPU image's Triton version may compile differently.",
]


def markdown(rows: list[KernelRow], shape: KernelShape) -> str:
    head = [
        "# Static report of the Triton kernels in sambay_model/ops, compiled for sm_90 without a GPU",
        "",
        "Written by `python -m bench.kernel_report`: Triton " + triton.__version__ + " (the GPU image has its own "
        f"Triton, which may allocate differently), {_ptxas_version()}, target `GPUTarget(\"cuda\", 90, 32)`.",
        f"Shape: batch {shape.batch}, T {shape.seqlen}, d_inner {shape.d_inner}, d_state {shape.d_state}, "
        f"d_conv {shape.d_conv}, {str(shape.dtype).removeprefix('torch.')} inputs, the strides the model passes.",
        "",
        "| " + " | ".join(name for name, _ in TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    body = ["| " + " | ".join(str(get(r)) for _, get in TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join(head + body + [""] + DEFINITIONS) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of the table")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown report path (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    shape = KernelShape()
    rows = report(shape)
    text = markdown(rows, shape)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, prefix=f".{args.out.name}.") as f:
        f.write(text)
    Path(f.name).replace(args.out)
    print(json.dumps([r.as_json() for r in rows], indent=1) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
