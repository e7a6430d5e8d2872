"""The Triton kernels (compute_backend="triton") on CPU, through Triton's interpreter, in a fresh process; and the
scan's launch geometry at the static report's shape (built on meta tensors, nothing runs).

TRITON_INTERPRET=1 must be set before Python imports triton, and importing sambay_model (through transformers and
torch._dynamo) already imports it, so the cases in ``triton_interpreter_cases.py`` (see its docstring) cannot
run in this process; this test runs them in a child pytest with the variable set, and fails with its report.
"""
from pathlib import Path

import torch

import sambay_model.ops
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
from sambay_model.ops import triton_scan
from sambay_model.ops.kernel_launch import KernelShape

CASES = Path(__file__).with_name("triton_interpreter_cases.py")
H100_SMS = 132


def test_triton_kernels_under_the_interpreter(run_interpreted):
    run_interpreted(CASES, timeout=900)


def test_scan_launches_fill_an_h100_with_short_time_loops():
    """Phi-4-mini-flash's Mamba layer at micro-batch 1 (T 8192, d_inner 5120): every scan kernel launches at least
    4 programs per SM of an H100, and no program loops over more than 8192 / 64 time steps."""
    shape = KernelShape()
    launches = triton_scan.kernel_launches(shape)
    assert {launch.phase for launch in launches} == {"scan forward", "scan backward", "scan decode step"}
    assert len({launch.name for launch in launches}) == len(launches) == 7
    for launch in launches:
        assert launch.programs >= 4 * H100_SMS, launch.name
        assert 1 <= launch.serial_steps <= shape.seqlen // 64, launch.name
        assert len(launch.args) == len(launch.kernel.arg_names), launch.name
        assert all(a.device.type == "meta" for a in launch.args if isinstance(a, torch.Tensor)), launch.name
    carries = [launch for launch in launches if launch.serial_steps > 1]
    assert [launch.name for launch in carries] == ["scan_carry_fwd", "scan_carry_bwd"]


def test_scan_launches_use_the_strides_the_model_passes(monkeypatch):
    """kernel_launches' meta delta, B, C have the strides of the Mamba layer's real scan call (torch backend, same
    call site) at the same widths (hidden 32 -> d_inner 64, dt_rank 2), and u the stride order of the conv's input:
    on GPU u is the Triton conv's output, which that kernel lays out in its input's order (the torch conv here
    returns a contiguous tensor, so u's strides cannot be read off this CPU run)."""
    seen, conv_inputs = [], []
    scan, conv = sambay_model.ops.selective_scan, sambay_model.ops.causal_conv1d

    def scan_spy(u, delta, A, B, C, *args, **kwargs):
        seen.append([t.stride() for t in (delta, B, C)])
        return scan(u, delta, A, B, C, *args, **kwargs)

    def conv_spy(x, *args, **kwargs):
        conv_inputs.append(x.stride())
        return conv(x, *args, **kwargs)

    monkeypatch.setattr(sambay_model.ops, "selective_scan", scan_spy)
    monkeypatch.setattr(sambay_model.ops, "causal_conv1d", conv_spy)
    config = Phi4FlashConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, sliding_window=4, compute_backend="torch")
    torch.manual_seed(0)
    Phi4FlashForCausalLM(config)(torch.randint(2, 64, (2, 10)), use_cache=False)
    assert seen and conv_inputs
    shape = KernelShape(batch=2, seqlen=10, d_inner=config.mamba_d_inner, d_state=config.mamba_d_state,
                        dtype=torch.float32)
    output = next(launch for launch in triton_scan.kernel_launches(shape) if launch.name == "scan_output_fwd")
    u, delta, _, _, B, C = output.args[:6]
    for strides in seen:
        assert strides == [t.stride() for t in (delta, B, C)]

    def order(strides):
        return sorted(range(3), key=lambda i: -strides[i])

    for strides in conv_inputs:
        assert order(u.stride()) == order(strides)
