"""selective_scan / selective_state_update (pure-PyTorch path) against a per-token float64 reference loop."""
import importlib

import pytest
import torch

from sambay_model.ops import selective_scan, selective_state_update
from sambay_model.ops.linear_scan import _recurrence, linear_scan, num_chunks
from tests.sambay_model.reference_ops import selective_scan_ref

scan_impl = importlib.import_module("sambay_model.ops.selective_scan")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_inputs(Bsz, Dch, N, T, *, seed=0, resets_p=0.0, initial=False, dtype=torch.float32, delta_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    inputs = dict(
        u=r(Bsz, Dch, T),
        delta=r(Bsz, Dch, T) * delta_scale,
        A=-torch.exp(r(Dch, N)),
        B=r(Bsz, N, T),
        C=r(Bsz, N, T),
        D=r(Dch),
        delta_bias=r(Dch) * 0.5,
    )
    inputs = {k: v.to(dtype) if k in ("u", "delta", "B", "C") else v.float() for k, v in inputs.items()}
    resets = None
    if resets_p > 0:
        resets = torch.rand(Bsz, T, generator=g) < resets_p
    h0 = r(Bsz, Dch, N).float() if initial else None
    return inputs, resets, h0


SHAPES = [(1, 1, 1, 1), (2, 3, 4, 7), (3, 8, 16, 64), (2, 5, 3, 129)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("resets_p", [0.0, 0.15])
@pytest.mark.parametrize("initial", [False, True])
def test_forward_matches_reference(shape, resets_p, initial):
    seed = sum(shape) + int(100 * resets_p) + initial
    inputs, resets, h0 = make_inputs(*shape, seed=seed, resets_p=resets_p, initial=initial)
    y, last = selective_scan(**inputs, resets=resets, initial_state=h0, return_last_state=True, backend="torch")
    y_ref, last_ref = selective_scan_ref(**inputs, resets=resets, initial_state=h0, return_last_state=True)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(last, last_ref) < 1e-5


@pytest.mark.parametrize("chunks", [1, 2, 5, 16])
def test_chunk_counts_agree(chunks):
    inputs, resets, h0 = make_inputs(2, 4, 8, 100, seed=3, resets_p=0.1, initial=True)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y_ref = selective_scan_ref(**leaves, resets=resets, initial_state=h0)
    y = scan_impl.selective_scan_torch(**leaves, resets=resets, initial_state=h0, chunks=chunks)
    assert rel_err(y, y_ref) < 1e-5
    grads = torch.autograd.grad(y.square().sum(), list(leaves.values()))  # reverse scan, chunked or not
    grads_ref = torch.autograd.grad(y_ref.square().sum(), list(leaves.values()))
    for name, a, b in zip(leaves, grads, grads_ref):
        assert rel_err(a, b) < 2e-5, name


def test_optional_arguments_off():
    inputs, _, _ = make_inputs(2, 4, 8, 33, seed=4)
    inputs["D"] = None
    inputs["delta_bias"] = None
    y = selective_scan(**inputs, delta_softplus=False, backend="torch")
    y_ref = selective_scan_ref(**inputs, delta_softplus=False)
    assert rel_err(y, y_ref) < 1e-5


def test_reset_at_first_token_drops_initial_state():
    inputs, _, h0 = make_inputs(2, 3, 4, 9, seed=5, initial=True)
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[:, 0] = True
    with_state = selective_scan(**inputs, resets=resets, initial_state=h0, backend="torch")
    without = selective_scan(**inputs, backend="torch")
    assert torch.equal(with_state, without)


def test_no_information_crosses_a_reset():
    inputs, _, _ = make_inputs(1, 4, 8, 20, seed=6)
    resets = torch.zeros(1, 20, dtype=torch.bool)
    resets[0, 12] = True
    y = selective_scan(**inputs, resets=resets, backend="torch")
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["u"][..., :12] += 5.0
    changed["B"][..., :12] -= 3.0
    y2 = selective_scan(**changed, resets=resets, backend="torch")
    assert torch.equal(y[..., 12:], y2[..., 12:])
    assert not torch.allclose(y[..., :12], y2[..., :12])


def test_gradients_match_reference():
    inputs, resets, h0 = make_inputs(2, 5, 4, 37, seed=7, resets_p=0.1, initial=True)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    h0 = h0.clone().requires_grad_()
    y, last = selective_scan(**leaves, resets=resets, initial_state=h0, return_last_state=True, backend="torch")
    y_ref, last_ref = selective_scan_ref(**leaves, resets=resets, initial_state=h0, return_last_state=True)
    g = torch.Generator().manual_seed(1)
    gy, gl = torch.randn(y.shape, generator=g), torch.randn(last.shape, generator=g)
    params = list(leaves.values()) + [h0]
    grads = torch.autograd.grad((y * gy).sum() + (last * gl).sum(), params)
    grads_ref = torch.autograd.grad((y_ref * gy.double()).sum() + (last_ref * gl.double()).sum(), params)
    for name, a, b in zip(list(leaves) + ["initial_state"], grads, grads_ref):
        assert a.dtype == torch.float32, name
        assert rel_err(a, b) < 2e-5, name


@pytest.mark.parametrize("max_elements, min_time, n_channel_blocks, n_time_chunks", [
    pytest.param(2 * 30 * 2 * 4, 30, 5, 1, id="channel_blocks"),  # 2 channels a block, the last one short
    pytest.param(7 * 2 * 9 * 4, 1, 1, 5, id="time_chunks"),  # 7 tokens a chunk, the last one short (30 = 4 * 7 + 2)
    pytest.param(4 * 2 * 3 * 4, 4, 3, 8, id="both"),
])
def test_blocked_scan_gradients_equal_the_reference(monkeypatch, max_elements, min_time, n_channel_blocks,
                                                    n_time_chunks):
    """Cutting channels and time into blocks (the state and its adjoint carried across time chunks) changes no
    output and no gradient, with an initial state, the last state and resets (one right at a chunk start)."""
    inputs, resets, h0 = make_inputs(2, 9, 4, 30, seed=8, resets_p=0.1, initial=True)
    resets[0, 7] = True
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    h0 = h0.clone().requires_grad_()
    params = list(leaves.values()) + [h0]
    y_ref, last_ref = selective_scan_ref(**leaves, resets=resets, initial_state=h0, return_last_state=True)
    g = torch.Generator().manual_seed(2)
    gy, gl = torch.randn(y_ref.shape, generator=g), torch.randn(last_ref.shape, generator=g)
    grads_ref = torch.autograd.grad((y_ref * gy.double()).sum() + (last_ref * gl.double()).sum(), params)
    monkeypatch.setattr(scan_impl, "_MAX_BLOCK_ELEMENTS", max_elements)
    monkeypatch.setattr(scan_impl, "_MIN_TIME_CHUNK", min_time)
    channels, times = scan_impl._blocks(30, 2, 9, 4)
    assert (len(channels), len(times)) == (n_channel_blocks, n_time_chunks)
    y, last = selective_scan(**leaves, resets=resets, initial_state=h0, return_last_state=True, backend="torch")
    grads = torch.autograd.grad((y * gy).sum() + (last * gl).sum(), params)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(last, last_ref) < 1e-5
    for name, a, b in zip(list(leaves) + ["initial_state"], grads, grads_ref):
        assert rel_err(a, b) < 2e-5, name


def test_long_scans_run_one_python_step_per_token_whatever_the_length():
    """The work-tensor bound is met by time chunks first: the number of channel blocks does not grow with T, so
    a long prefill costs linearly more Python steps (it grew quadratically when only channels were blocked)."""
    for T in (1024, 16384, 131072):
        channels, times = scan_impl._blocks(T, 1, 512, 16)
        assert len(channels) == 1
        assert sum(t1 - t0 for t0, t1 in times) == T
    wide, _ = scan_impl._blocks(32768, 8, 5120, 16)  # the official width: blocked channels, bounded work tensors
    assert len(wide) == len(scan_impl._blocks(1 << 20, 8, 5120, 16)[0])


def test_strong_decay_is_stable():
    # delta * A around -100 per step (and beyond): products of tiny decays must not overflow or NaN.
    inputs, resets, h0 = make_inputs(2, 4, 8, 80, seed=9, resets_p=0.05, initial=True, delta_scale=30.0)
    inputs["A"] = inputs["A"] * 20
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y = selective_scan(**leaves, resets=resets, initial_state=h0, backend="torch")
    y_ref = selective_scan_ref(**leaves, resets=resets, initial_state=h0)
    assert torch.isfinite(y).all()
    assert rel_err(y, y_ref) < 1e-5
    grads = torch.autograd.grad(y.square().sum(), list(leaves.values()))
    grads_ref = torch.autograd.grad(y_ref.square().sum(), list(leaves.values()))
    for name, a, b in zip(leaves, grads, grads_ref):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < 5e-5, name


def test_low_precision_inputs_computed_in_fp32():
    inputs, resets, _ = make_inputs(2, 4, 8, 40, seed=10, resets_p=0.1, dtype=torch.bfloat16)
    y = selective_scan(**inputs, resets=resets, backend="torch")
    y_ref = selective_scan_ref(**inputs, resets=resets)  # same bf16 values, float64 math
    assert y.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 1e-2  # only the final rounding to bf16


def test_state_update_steps_equal_full_scan():
    inputs, _, h0 = make_inputs(2, 6, 4, 25, seed=11, initial=True)
    y_full, last_full = selective_scan(**inputs, initial_state=h0, return_last_state=True, backend="torch")
    state = h0.clone()
    ys = []
    for t in range(25):
        y_t, state_new = selective_state_update(
            state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], inputs["B"][..., t], inputs["C"][..., t],
            inputs["D"], dt_bias=inputs["delta_bias"], dt_softplus=True, backend="torch",
        )
        state = state_new
        ys.append(y_t)
    assert rel_err(torch.stack(ys, -1), y_full) < 1e-5
    assert rel_err(state, last_full) < 1e-5


def test_prefill_then_decode_equals_full_scan():
    inputs, resets, _ = make_inputs(2, 6, 4, 30, seed=12, resets_p=0.1)
    y_full = selective_scan(**inputs, resets=resets, backend="torch")
    head = {k: (v[..., :20] if k in ("u", "delta", "B", "C") else v) for k, v in inputs.items()}
    _, state = selective_scan(**head, resets=resets[:, :20], return_last_state=True, backend="torch")
    for t in range(20, 30):
        state = state * (~resets[:, t]).float()[:, None, None]  # a document starting mid-decode clears the state
        y_t, state = selective_state_update(
            state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], inputs["B"][..., t], inputs["C"][..., t],
            inputs["D"], dt_bias=inputs["delta_bias"], backend="torch",
        )
        assert rel_err(y_t, y_full[..., t]) < 1e-5


def test_state_update_does_not_modify_its_input():
    inputs, _, h0 = make_inputs(1, 3, 4, 1, seed=13, initial=True)
    before = h0.clone()
    selective_state_update(h0, inputs["u"][..., 0], inputs["delta"][..., 0], inputs["A"], inputs["B"][..., 0],
                           inputs["C"][..., 0], backend="torch")
    assert torch.equal(h0, before)


def test_bad_shapes_name_the_argument():
    inputs, _, _ = make_inputs(2, 4, 8, 10, seed=14)
    inputs["B"] = inputs["B"][:, :, :9]
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(**inputs, backend="torch")


@pytest.mark.parametrize("T", [1, 2, 9, 64, 101])
@pytest.mark.parametrize("chunks", [None, 1, 3, 10])
def test_linear_scan_matches_recurrence(T, chunks):
    g = torch.Generator().manual_seed(T)
    e = torch.rand(T, 3, 5, generator=g, dtype=torch.float64)
    x = torch.randn(T, 3, 5, generator=g, dtype=torch.float64)
    h0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    expected = torch.empty_like(x)
    h = h0
    for t in range(T):
        h = e[t] * h + x[t]
        expected[t] = h
    assert torch.allclose(linear_scan(e, x, h0, chunks), expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(_recurrence(e, x, None), linear_scan(e, x, None, chunks), rtol=1e-12, atol=1e-12)


def test_num_chunks_bounds():
    assert num_chunks(1, 10) == 1
    assert num_chunks(4096, 1 << 15) == 1  # wide step: plain recurrence
    assert num_chunks(4096, 64) == 8  # narrow step: chunks of about TARGET_STEP_ELEMENTS values
    assert num_chunks(4096, 1) == 64  # tiny step: capped at sqrt(T)
    assert num_chunks(4096, 1 << 15, on_gpu=True) == 64  # GPU: fewest kernel launches
