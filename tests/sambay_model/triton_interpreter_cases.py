"""compute_backend="triton" on CPU: each Triton kernel against the PyTorch ops, forward and gradients, the whole
model on packed rows (logits, every parameter gradient) and in left-padded generation, run through Triton's
interpreter. Collected only through ``test_ops_triton.py``, which runs this file in a fresh process.

Why a fresh process: Triton fixes at decoration time whether a ``@triton.jit`` function (ours, and its own
standard library such as ``tl.sum``) runs compiled or interpreted, from TRITON_INTERPRET; and importing
``sambay_model`` (through transformers and torch._dynamo) already imports triton. So the variable must be set
before the process imports anything, which this file checks.

FlexAttention's backward exists in eager mode on every device, but torch 2.13 refuses it on CPU at its entry
check (``_validate_device``). The attention and model tests lift that one check (``flex_backward_on_cpu``) to
emulate the GPU condition, where the same call runs compiled; the mask (our code) is the same either way.

The interpreter runs every tl op in NumPy, so sizes are tiny and the kernels' block sizes are shrunk until
every kernel crosses channel-block, chunk and tile edges.
"""
import dataclasses
import functools
import os

if os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("triton_interpreter_cases.py needs TRITON_INTERPRET=1 set before Python starts; "
                       "run it through tests/sambay_model/test_ops_triton.py")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.attention.flex_attention as torch_flex  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM  # noqa: E402
from sambay_model import ops  # noqa: E402
from sambay_model.ops import triton_attention, triton_conv, triton_scan  # noqa: E402
from sambay_model.ops.attention import attention_torch  # noqa: E402
from sambay_model.ops.conv import causal_conv1d_torch  # noqa: E402
from sambay_model.ops.selective_scan import selective_scan_torch, selective_state_update_torch  # noqa: E402

# CPU FlexAttention runs unfused on purpose here (see the module docstring).
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    monkeypatch.setattr(torch_flex, "_validate_device", lambda query, key, value: None)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _grad_pair(fn_a, fn_b, leaves, seed):
    """Run both functions on copies of ``leaves`` with the same random output weights; return outputs and grads."""
    results = []
    for fn in (fn_a, fn_b):
        inputs = {k: (v.detach().clone().requires_grad_(v.is_floating_point()) if v is not None else None)
                  for k, v in leaves.items()}
        outs = fn(**inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        g = _gen(seed)
        loss = sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs)
        loss.backward()
        grads = {k: v.grad for k, v in inputs.items() if v is not None and v.grad is not None}
        results.append(([o.detach() for o in outs], grads))
    return results


def _assert_same(results, rtol, atol):
    (outs_a, grads_a), (outs_b, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=rtol, atol=atol, msg=name)


def test_kernels_are_interpreted_here():
    """Guards the set-up above: compiled kernels would need a GPU and fail with an unrelated error."""
    assert isinstance(triton_scan._scan_fwd_kernel, InterpretedFunction)
    assert isinstance(triton_conv._load_x, InterpretedFunction)
    assert isinstance(triton_conv._conv_bwd_kernel, InterpretedFunction)
    assert ops.resolve_backend("triton", "cpu") == "triton"


# ----------------------------------------------------------------------------------------- selective scan

T_ODD = 11  # odd, and not a multiple of the chunk (4): the last chunk is partial
# Tiles shrunk to cross every edge at D = 5 channels: forward programs of 2 blocks of 2 channels (the second has a
# partial block and an empty one), carry programs of 2 channels, backward tiles of 2 channels.
SMALL = triton_scan.ScanTiling(chunk=4, block_d=2, channel_blocks=2, carry_block_d=2, bwd_block_d=2)
# The whole-model tests' scans (d_inner 64, T <= 10): chunks of 4 tokens, wide tiles, few programs.
MODEL_TILING = triton_scan.ScanTiling(chunk=4, block_d=8, channel_blocks=8, carry_block_d=64, bwd_block_d=8,
                                      bwd_programs=1)


def _resets(kind, Bsz, T):
    r = torch.zeros(Bsz, T, dtype=torch.bool)
    if kind == "packed":
        r[0, 0] = True  # first position: the initial state must be dropped
        r[0, 4] = r[0, 5] = True  # a chunk's first token (chunk = 4), then a consecutive reset: a one-token document
        r[1, T - 1] = True  # last position
        r[1, 3] = True  # a chunk's last token
        if T > 8:
            r[1, 8] = True  # the third chunk's first token
    return None if kind == "none" else r


def _scan_leaves(Bsz, Dch, T, N, dtype, seed):
    g = _gen(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    delta = rnd(Bsz, Dch, T) * 0.5
    delta[0, 1, 2] = 25.0  # above F.softplus's threshold (20): the identity branch and its gradient
    return dict(
        u=rnd(Bsz, Dch, T).to(dtype), delta=delta.to(dtype),
        A=-(torch.rand(Dch, N, generator=g) + 0.2), B=rnd(Bsz, N, T).to(dtype), C=rnd(Bsz, N, T).to(dtype),
        D=rnd(Dch), delta_bias=rnd(Dch) * 0.1, initial_state=rnd(Bsz, Dch, N),
    )


# bwd_programs sets the backward kernel's channel loop at B = 2, 3 chunks, 3 blocks of 2 channels: 1024 -> one
# block per program; 12 -> 2 programs of 2 blocks (the last block past D); 6 -> one program looping over all 3.
@pytest.mark.parametrize(
    "resets, with_state, optional, dtype, T, bwd_programs",
    [
        pytest.param("packed", True, True, torch.float32, T_ODD, 1024, id="packed-initial-last-fp32"),
        pytest.param("packed", True, True, torch.float32, T_ODD, 12, id="packed-bwd-loop-past-D"),
        pytest.param("none", False, True, torch.float32, T_ODD, 6, id="no-resets-bwd-loop-all"),
        pytest.param("packed", True, False, torch.float32, T_ODD, 1024, id="no-D-no-bias-no-softplus"),
        pytest.param("packed", True, True, torch.bfloat16, T_ODD, 12, id="packed-bf16"),
        pytest.param("none", True, True, torch.float32, 3, 1024, id="shorter-than-a-chunk"),
        pytest.param("packed", True, True, torch.float32, 12, 1024, id="whole-chunks"),
    ],
)
def test_selective_scan_matches_torch(resets, with_state, optional, dtype, T, bwd_programs):
    # D = 5 channels (partial blocks); N = 3 states (not a power of two: a masked block of 4).
    Bsz, Dch, N = 2, 5, 3
    leaves = _scan_leaves(Bsz, Dch, T, N, dtype, seed=1)
    if not with_state:
        leaves["initial_state"] = None
    if not optional:
        leaves["D"] = leaves["delta_bias"] = None
    r = _resets(resets, Bsz, T)
    tiling = dataclasses.replace(SMALL, bwd_programs=bwd_programs)
    kw = dict(resets=r, return_last_state=with_state, delta_softplus=optional)

    def run_triton(**leaves):
        return triton_scan.selective_scan_triton(**leaves, **kw, tiling=tiling)

    def run_torch(**leaves):
        return selective_scan_torch(**leaves, **kw)

    results = _grad_pair(run_triton, run_torch, leaves, seed=2)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    _assert_same(results, **tol)
    assert results[0][0][0].dtype == dtype
    if with_state and resets == "packed":
        # Row 0 resets at its first token: the initial state cannot matter there.
        assert torch.count_nonzero(results[0][1]["initial_state"][0]) == 0
        assert torch.count_nonzero(results[0][1]["initial_state"][1]) > 0


def test_selective_scan_only_the_last_state_has_a_gradient():
    """Backward with no gradient for y (None): only the last state's gradient flows back."""
    leaves = _scan_leaves(1, 3, 6, 2, torch.float32, seed=13)
    kw = dict(resets=_resets("packed", 2, 6)[1:], return_last_state=True)
    (outs, grads), (outs_ref, grads_ref) = _grad_pair(
        lambda **x: triton_scan.selective_scan_triton(**x, **kw, tiling=SMALL)[1],
        lambda **x: selective_scan_torch(**x, **kw)[1], leaves, seed=14)
    torch.testing.assert_close(outs[0], outs_ref[0], rtol=1e-4, atol=1e-5)
    assert set(grads) - set(grads_ref) == {"D"}  # D reaches only y: autograd leaves it out of the reference
    assert not grads["D"].any() and not grads["C"].any()
    for name, ref in grads_ref.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-4, atol=1e-5, msg=name)


def test_selective_scan_default_blocks_and_dispatch():
    """The default tiling (one chunk, one channel block here) through ``ops.selective_scan``'s dispatch."""
    leaves = _scan_leaves(1, 6, 7, 4, torch.float32, seed=3)
    r = _resets("packed", 2, 7)[1:]
    results = _grad_pair(lambda **x: ops.selective_scan(**x, resets=r, return_last_state=True, backend="triton"),
                         lambda **x: selective_scan_torch(**x, resets=r, return_last_state=True), leaves, seed=4)
    _assert_same(results, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_optional", [True, False], ids=["D-bias-softplus", "bare"])
def test_state_update_matches_torch_and_the_scan(with_optional):
    Bsz, Dch, N, T = 2, 5, 3, 3
    leaves = _scan_leaves(Bsz, Dch, T, N, torch.float32, seed=4)
    opt = dict(D=leaves["D"], dt_bias=leaves["delta_bias"], dt_softplus=True) if with_optional else dict(
        D=None, dt_bias=None, dt_softplus=False)
    state = leaves["initial_state"]
    ys = []
    for t in range(T):
        args = (state, leaves["u"][..., t], leaves["delta"][..., t], leaves["A"], leaves["B"][..., t],
                leaves["C"][..., t])
        y, new_state = triton_scan.selective_state_update_triton(*args, **opt, block_d=2)
        y_ref, state_ref = selective_state_update_torch(*args, **opt)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new_state, state_ref, rtol=1e-5, atol=1e-6)
        ys.append(y)
        state = new_state
    y_scan, last = triton_scan.selective_scan_triton(
        leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], opt["D"], opt["dt_bias"],
        opt["dt_softplus"], initial_state=leaves["initial_state"], return_last_state=True,
        tiling=dataclasses.replace(SMALL, chunk=2))
    torch.testing.assert_close(torch.stack(ys, -1), y_scan, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, last, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ conv


@pytest.mark.parametrize(
    "resets, with_init, activation, with_bias, dtype",
    [
        pytest.param("packed", True, "silu", True, torch.float32, id="resets-and-initial-state"),
        pytest.param("none", True, None, False, torch.float32, id="initial-state-no-activation"),
        pytest.param("packed", False, "silu", False, torch.float32, id="resets-only"),
        pytest.param("packed", True, "silu", True, torch.bfloat16, id="bf16"),
    ],
)
def test_causal_conv1d_matches_torch(resets, with_init, activation, with_bias, dtype):
    Bsz, Dch, T, K = 2, 5, T_ODD, 4
    g = _gen(5)
    leaves = dict(
        x=torch.randn(Bsz, Dch, T, generator=g).to(dtype),
        weight=torch.randn(Dch, 1, K, generator=g),
        bias=torch.randn(Dch, generator=g) if with_bias else None,
        initial_state=torch.randn(Bsz, Dch, K - 1, generator=g).to(dtype) if with_init else None,
    )
    r = _resets(resets, Bsz, T)

    def run_triton(**kw):  # tiles of 4 channels x 8 tokens: partial tiles on both axes
        return triton_conv.causal_conv1d_triton(**kw, resets=r, activation=activation, block_d=4, block_t=8)

    def run_torch(**kw):
        if dtype == torch.bfloat16:  # the torch op computes in bf16; compare with its fp32 result instead
            kw = {k: (v.float() if v is not None else None) for k, v in kw.items()}
        return causal_conv1d_torch(**kw, resets=r, activation=activation)

    results = _grad_pair(run_triton, run_torch, leaves, seed=6)
    if dtype == torch.bfloat16:
        outs, grads = results[1]
        results[1] = ([o.to(dtype) for o in outs], {k: v.to(leaves[k].dtype) for k, v in grads.items()})
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    _assert_same(results, **tol)


def test_conv_dispatch_uses_triton():
    x = torch.randn(1, 3, 6, generator=_gen(7))
    w = torch.randn(3, 4, generator=_gen(8))
    out = ops.causal_conv1d(x, w, None, backend="triton")
    torch.testing.assert_close(out, causal_conv1d_torch(x, w, None), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- attention


ATTENTION_CASES = [
    pytest.param(dict(causal=True, window=3, doc_ids=True, padding=True), 9, id="window-docs-padding"),
    pytest.param(dict(causal=True, window=None, doc_ids=True, padding=False), 9, id="docs"),
    pytest.param(dict(causal=True, window=None, doc_ids=False, padding=True), 9, id="left-padding-segment"),
    pytest.param(dict(causal=True, window=4, doc_ids=False, padding=False), 4, id="window-chunk-of-queries"),
    pytest.param(dict(causal=False, window=None, doc_ids=False, padding=True), 9, id="bidirectional-padding"),
]


@pytest.mark.parametrize("case, Tq", ATTENTION_CASES)
def test_flex_attention_matches_torch(case, Tq, flex_backward_on_cpu):
    # GQA (4 query heads on 2 kv heads) and V twice as wide as Q/K, as differential attention reads it.
    Bsz, Hq, Hkv, Tk, d = 2, 4, 2, 9, 4
    g = _gen(9)
    leaves = dict(q=torch.randn(Bsz, Hq, Tq, d, generator=g), k=torch.randn(Bsz, Hkv, Tk, d, generator=g),
                  v=torch.randn(Bsz, Hkv, Tk, 2 * d, generator=g))
    kwargs = dict(causal=case["causal"], window=case["window"], scale=0.3)
    if case["doc_ids"]:
        kwargs["doc_ids"] = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0, 1, 1, 1]])
    if case["padding"]:  # left padding of row 1: a segment of its own (id -1), as the model lays it out
        docs = kwargs.get("doc_ids", torch.zeros(Bsz, Tk, dtype=torch.long)).clone()
        docs[1, :4] = -1
        kwargs["doc_ids"] = docs
    results = _grad_pair(lambda **kw: triton_attention.attention_flex(**kw, **kwargs),
                         lambda **kw: attention_torch(**kw, **kwargs), leaves, seed=10)
    _assert_same(results, rtol=1e-5, atol=1e-5)


def test_visibility_mod_equals_the_torch_mask():
    """The mask_mod is what a GPU compiles; compare it pair by pair with the SDPA path's mask."""
    from sambay_model.ops.attention import build_mask

    Tq, Tk = 5, 9
    doc = torch.tensor([[-1, 0, 1, 1, 1, 1, 2, 2, 2]])
    mod = triton_attention.visibility_mod(Tq, Tk, causal=True, window=3, doc_ids=doc)
    qi, ki = torch.meshgrid(torch.arange(Tq), torch.arange(Tk), indexing="ij")
    got = mod(torch.zeros_like(qi), torch.zeros_like(qi), qi, ki)
    want = build_mask(torch.arange(Tk - Tq, Tk), torch.arange(Tk), causal=True, window=3,
                      q_doc=doc[:, Tk - Tq:], k_doc=doc)[0, 0]
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------- whole model


@pytest.fixture
def triton_calls(monkeypatch):
    """Names of the Triton adapters called (proves the triton backend really ran them)."""
    calls = []
    for module, name in ((triton_scan, "selective_scan_triton"), (triton_scan, "selective_state_update_triton"),
                         (triton_conv, "causal_conv1d_triton"), (triton_attention, "attention_flex")):
        original = getattr(module, name)
        if name == "selective_scan_triton":  # the interpreter scans element by element: no chunk of 64 for T = 10
            original = functools.partial(original, tiling=MODEL_TILING)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    return calls


def test_model_on_packed_rows_triton_equals_torch(flex_backward_on_cpu, triton_calls):
    """Logits and every parameter gradient of a small SambaY on packed rows: triton backend vs torch backend."""
    calls = triton_calls
    values = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, sliding_window=4, bos_token_id=0, eos_token_id=1,
                  initializer_range=0.1)  # at the default 0.02, state leaking across a document moves logits < 1e-5
    torch.manual_seed(0)
    model = Phi4FlashForCausalLM(Phi4FlashConfig(**values, compute_backend="torch"))
    g = _gen(11)
    input_ids = torch.randint(2, 64, (2, 10), generator=g)
    doc_ids = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    results = {}
    for backend in ("torch", "triton"):
        model.config.compute_backend = backend
        model.zero_grad()
        logits = model(input_ids, doc_ids=doc_ids, use_cache=False).logits
        F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten()).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results[backend] = (logits.detach(), grads)
        assert set(calls) == (set() if backend == "torch" else {"selective_scan_triton", "causal_conv1d_triton",
                                                                 "attention_flex"})
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-4, atol=1e-5)
    grads_torch, grads_triton = results["torch"][1], results["triton"][1]
    assert grads_triton.keys() == grads_torch.keys()
    assert len(grads_torch) == len(list(model.parameters()))
    for name in grads_torch:
        torch.testing.assert_close(grads_triton[name], grads_torch[name], rtol=1e-3, atol=1e-5, msg=name)


def test_model_left_padded_generate_triton_equals_torch(triton_calls):
    """Padded rows and the decode path: left-padded batched prefill (padding resets, padded keys), then decode
    steps (the Triton state update, one query against a padded cache): same tokens and logits as torch."""
    values = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, sliding_window=4, bos_token_id=0, eos_token_id=1, initializer_range=0.1)
    torch.manual_seed(0)
    model = Phi4FlashForCausalLM(Phi4FlashConfig(**values, compute_backend="torch"))
    g = _gen(12)
    lengths = (7, 2, 5)
    ids = torch.full((3, 7), 2, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 7 - n:] = torch.randint(3, 64, (n,), generator=g)
        mask[i, 7 - n:] = 1
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=2, eos_token_id=None, output_logits=True,
                  return_dict_in_generate=True)
    runs = {}
    with torch.no_grad():
        for backend in ("torch", "triton"):
            model.config.compute_backend = backend
            runs[backend] = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            assert bool(triton_calls) == (backend == "triton")
    assert set(triton_calls) == {"selective_scan_triton", "selective_state_update_triton", "causal_conv1d_triton",
                                 "attention_flex"}
    assert runs["triton"].sequences.tolist() == runs["torch"].sequences.tolist()
    for step_triton, step_torch in zip(runs["triton"].logits, runs["torch"].logits, strict=True):
        torch.testing.assert_close(step_triton, step_torch, rtol=1e-4, atol=1e-5)
