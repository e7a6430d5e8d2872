"""bench/kernel_report.py: every Triton kernel of sambay_model/ops compiled for sm_90 on this CPU machine (the
wheel's ptxas and cuobjdump) at Phi-4-mini-flash's shape; no spill and a short time loop for the scan and conv
kernels, plus the SASS reading and the occupancy estimate on hand-made inputs."""
import ast
import contextlib
import io
import json

import pytest

from bench import kernel_report
from sambay_model.ops.kernel_launch import KernelShape

MAX_SERIAL_STEPS = KernelShape().seqlen // 64  # issue 20 item 6: at most T / 64 steps per program


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One run of the command line (``--json``): the rows it printed and the markdown it wrote."""
    out = tmp_path_factory.mktemp("kernel_report") / "kernel_report.md"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert kernel_report.main(["--json", "--out", str(out)]) == 0
    return json.loads(printed.getvalue()), out.read_text()


def test_every_module_with_launches_is_compiled(compiled):
    rows, text = compiled
    defining = sorted(p.stem for p in kernel_report.OPS_DIR.glob("*.py")
                      if any(isinstance(n, ast.FunctionDef) and n.name == "kernel_launches"
                             for n in ast.parse(p.read_text()).body))
    assert "triton_conv" in defining
    expected = [launch.name for module in kernel_report.launch_modules() for launch in module.kernel_launches(
        KernelShape())]
    assert [m.__name__.rsplit(".", 1)[1] for m in kernel_report.launch_modules()] == defining
    assert [r["kernel"] for r in rows] == expected and {"conv_fwd", "conv_bwd"} <= set(expected)
    for r in rows:
        assert tuple(r) == kernel_report.JSON_KEYS, r
        assert 0 < r["registers"] <= 255 and r["programs"] > 0 and r["serial_steps"] >= 1, r
        assert f"| {r['kernel']} |" in text
    assert "## What it cannot tell" in text and "not times" in text


def test_scan_and_conv_kernels_do_not_spill_and_walk_few_steps(compiled):
    rows, _ = compiled
    checked = [r for r in rows if "scan" in r["kernel"] or "conv" in r["kernel"]]
    assert checked
    bad = [r for r in checked if r["spill_bytes"] or r["serial_steps"] > MAX_SERIAL_STEPS]
    assert not bad, f"spills or more than {MAX_SERIAL_STEPS} serial steps at T 8192:\n" + "\n".join(map(str, bad))


def test_conv_kernels_fill_an_h100(compiled):
    """At batch 1 the conv grids still give every SM at least 4 programs, and backward's time loop has no
    block-wide barrier (its dweight / dbias reduction waits until after the loop)."""
    rows = {r["kernel"]: r for r in compiled[0]}
    for name in ("conv_fwd", "conv_bwd"):
        assert rows[name]["programs"] >= 4 * kernel_report.SMS, rows[name]
    assert rows["conv_bwd"]["serial_steps"] > 1 and rows["conv_bwd"]["barriers_per_step"] == 0


def _listing(*lines: str) -> list[tuple[int, str]]:
    return [(16 * i, text) for i, text in enumerate(lines)]


def test_sass_loops_and_barriers_per_step():
    code = _listing(
        "S2R R0, SR_TID.X",                   # 0x00
        "BAR.SYNC.DEFER_BLOCKING 0x0",        # 0x10  before the loop: not per step
        "LDG.E R2, desc[UR4][R4.64]",         # 0x20  outer loop starts here
        "BAR.SYNC.DEFER_BLOCKING 0x0",        # 0x30
        "FADD R2, R2, R3",                    # 0x40  inner loop
        "@P0 BRA 0x40",                       # 0x50  closes the inner loop
        "BAR.RED.POPC RZ, 0x0, PT",           # 0x60
        "BAR.ARV 0x1, 0x40",                  # 0x70  only signals: not a wait
        "@!P1 BRA `(0x20)",                   # 0x80  closes the outer loop
        "BAR.SYNC 0x0",                       # 0x90
        "EXIT",                               # 0xa0
        "BRA 0xb0",                           # 0xb0  the trailing self-branch: no loop
    )
    assert kernel_report.outer_loops(code) == [(0x20, 0x80)]
    assert kernel_report.step_counts(code, serial_steps=10) == (2, 7)
    assert kernel_report.step_counts(code, serial_steps=1) == (4, 12)  # no time loop: the whole kernel
    unrolled = _listing("BAR.SYNC 0x0", "BAR.SYNC 0x0", "BAR.SYNC 0x0", "EXIT")
    assert kernel_report.step_counts(unrolled, serial_steps=2) == (2, 2)


@pytest.mark.parametrize("registers, warps, shared, resident", [
    (128, 8, 1024, 2),     # 4,096 registers a warp: 16 warps
    (136, 8, 1024, 1),     # 4,352 a warp: 15 warps, one program of 8
    (56, 4, 2048, 9),      # 1,792 a warp: 36 warps
    (32, 1, 0, 32),        # the 32 program slots bind
    (64, 4, 100_000, 2),   # shared memory binds
])
def test_resident_programs_estimate(registers, warps, shared, resident):
    assert kernel_report.resident_programs(registers, warps, shared) == resident
