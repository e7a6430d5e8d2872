"""The LM head's GEMM precision (``lm_head_precision``: fp32, tf32, bf16; ``sambay_model.lm_head_loss``).

1. The numerical effect at the Phi-4-mini vocabulary (200,064), quantified on CPU by rounding the operands exactly
   as each mode does: TF32 keeps 10 mantissa bits, bf16 7, both round to nearest even on the fp32 bits (so unit
   roundoff u = 2**-11 and 2**-8); the bf16 mode also stores the logits tile and the logits-gradient tile in bf16
   (TRL's kernel tiles in the compute dtype). Everything else is evaluated in float64, so the difference against
   the exact (float64) head isolates the mode; the fp32 path itself is that exact head up to fp32 evaluation
   noise, which every mode shares (checked on the real kernel below).

   Derived bounds (rigorous; asserted elementwise). With S = |h| @ |w|.T:
   - logits: each product of rounded operands is h w (1 + d1)(1 + d2), |d| <= u, so |dz| <= (2u + u**2) S; a
     bf16 tile adds u_t |z'| <= u_t (|z| + (2u + u**2) S).
   - loss: per token l = lse(z) - z_target, and lse is 1-Lipschitz in the max norm, so
     |dl| <= |dz_target| + max_j |dz_j|; the mean loss moves by at most the mean of that.
   - gradients: p_j changes by a factor within exp(+-2 max_j |dz_j|), so |dg| <= p (exp(2 d) - 1) / N (plus u_t
     of the stored gradient tile); the backward GEMMs round g and w (or h) again, hence
     |d grad_h| <= ((|g| + e_g)(2u + u**2) + e_g) @ |w| and the same with |h| for grad_w.
   Measured here (N=32 tokens, H=64, logits of std 3, targets drawn from the model): tf32 moves the loss by
   ~1e-4 and the gradients by ~3e-4 relative, bf16 about 10x more; the worst-case bounds are looser (rounding
   errors cancel), so the test also checks that the logit bound of one mode is violated by the next coarser one.
2. The mode is really applied on the code path that runs on CUDA: the CUDA condition is emulated on CPU by
   patching ``lm_head_loss._has_tensor_cores`` (the one place the device decides), and a dispatch mode records
   the dtypes and the cuBLAS TF32 setting each head GEMM sees, forward and backward, in the loss, in DPO's fused
   head and in held-out scoring. (On CPU the TF32 setting changes no number; the bf16 path really runs and is
   checked against the bound of (1).)
"""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sambay_model.lm_head_loss as head
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
from train.config import ModelConfig
from train.alignment.preference_scoring import _summed_logps

VOCAB, HIDDEN, TOKENS = 200_064, 64, 32
MANTISSA_BITS = {"fp32": None, "tf32": 10, "bf16": 7}
TILE_BITS = {"fp32": None, "tf32": None, "bf16": 7}  # the bf16 mode stores logits and their gradient in bf16


def round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """fp32 ``x`` rounded to ``bits`` explicit mantissa bits, to nearest even on the fp32 bit pattern."""
    drop = 23 - bits
    i = x.float().contiguous().view(torch.int32)
    i = (i + ((i >> drop) & 1) + ((1 << (drop - 1)) - 1)) & ~((1 << drop) - 1)
    return i.view(torch.float32)


def _r(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    return x.double() if bits is None else round_mantissa(x, bits).double()


def _unit(bits: int | None) -> float:
    return 0.0 if bits is None else 2.0 ** -(bits + 1)


@pytest.fixture(scope="module")
def problem():
    """Final hidden states (LayerNorm-like, unit variance), a head with logits of std 3, targets drawn from it."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(TOKENS, HIDDEN, generator=g)
    w = torch.randn(VOCAB, HIDDEN, generator=g) * (3.0 / math.sqrt(HIDDEN))
    p = torch.softmax(h.double() @ w.double().t(), -1)
    t = torch.multinomial(p.float(), 1, generator=g).squeeze(-1)
    return h, w, t


def emulate(h, w, t, mode: str) -> dict:
    """Logits, mean loss, logits gradient and parameter gradients (float64) of the head at ``mode``: its GEMM
    operands rounded as the mode does, in forward and in both backward GEMMs, the bf16 tiles stored in bf16."""
    bits, tile = MANTISSA_BITS[mode], TILE_BITS[mode]
    z = _r((_r(h, bits) @ _r(w, bits).t()).float(), tile) if tile else _r(h, bits) @ _r(w, bits).t()
    loss = (torch.logsumexp(z, -1) - z.gather(-1, t[:, None]).squeeze(-1)).mean()
    g = torch.softmax(z, -1)
    g[torch.arange(len(t)), t] -= 1
    g = _r((g / len(t)).float(), tile) if tile else g / len(t)
    return {"z": z, "loss": loss, "g": g, "grad_h": _r(g.float(), bits) @ _r(w, bits) if bits else g @ w.double(),
            "grad_w": (_r(g.float(), bits).t() @ _r(h, bits)) if bits else g.t() @ h.double()}


def derived_bounds(h, w, t, exact: dict, mode: str) -> dict:
    """The module docstring's bounds on |mode - exact| for logits, loss and both gradients (elementwise)."""
    u, ut = _unit(MANTISSA_BITS[mode]), _unit(TILE_BITS[mode])
    a, hw = 2 * u + u * u, (h.double().abs(), w.double().abs())
    s = hw[0] @ hw[1].t()
    bz = a * s * (1 + ut) + ut * exact["z"].abs()
    rows = torch.arange(len(t))
    d = bz.amax(-1, keepdim=True)
    loss = (bz[rows, t] + d.squeeze(-1)).mean()
    p = torch.softmax(exact["z"], -1)
    ep = p * torch.expm1(2 * d) / len(t)
    e_g = ep + ut * (exact["g"].abs() + ep)
    coef = (exact["g"].abs() + e_g) * a + e_g
    return {"z": bz, "loss": loss, "grad_h": coef @ hw[1], "grad_w": coef.t() @ hw[0]}


def test_rounding_is_round_to_nearest_even_on_the_fp32_bits():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(1)) * 100
    assert torch.equal(round_mantissa(x, 7), x.bfloat16().float())  # torch's own fp32 -> bf16 conversion
    tf = round_mantissa(x, 10)
    assert not (tf.view(torch.int32) & 0x1FFF).any()  # 10 mantissa bits left
    assert ((tf - x).abs() <= x.abs() * 2.0**-11).all()
    one = torch.tensor([1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11])  # ties: to the even neighbour
    assert round_mantissa(one, 10).tolist() == [1.0, 1.0 + 4 * 2.0**-11]


@pytest.fixture(scope="module")
def exact(problem):
    return emulate(*problem, "fp32")


@pytest.mark.parametrize("mode,coarser_than", [("tf32", "fp32"), ("bf16", "tf32")])
def test_mode_error_at_200k_vocab_stays_within_the_derived_bound(problem, exact, mode, coarser_than):
    h, w, t = problem
    got, bound = emulate(h, w, t, mode), derived_bounds(h, w, t, exact, mode)
    err = {k: (got[k] - exact[k]).abs() for k in ("z", "loss", "grad_h", "grad_w")}
    for k in err:
        assert (err[k] <= bound[k]).all(), (mode, k, float((err[k] / bound[k]).max()))
    ratio = float((err["z"] / bound["z"]).max())
    assert ratio > 0.05, f"{mode}: the logit bound is {1 / ratio:.0f}x the worst error, too loose to mean much"
    assert (err["z"] > derived_bounds(h, w, t, exact, coarser_than)["z"]).any()  # the check tells modes apart
    rel = {k: float((got[k] - exact[k]).norm() / exact[k].norm()) for k in ("grad_h", "grad_w")}
    print(f"{mode}: |dloss| {float(err['loss']):.2e} (bound {float(bound['loss']):.2e}, loss "
          f"{float(exact['loss']):.3f}), grad_h rel {rel['grad_h']:.2e}, grad_w rel {rel['grad_w']:.2e}")


def test_errors_scale_with_the_unit_roundoff(problem, exact):
    """First order the errors are linear in u, so bf16 / tf32 is about 2**-8 / 2**-11 = 8 (more with bf16 tiles)."""
    rel = {m: float((emulate(*problem, m)["grad_h"] - exact["grad_h"]).norm() / exact["grad_h"].norm())
           for m in ("tf32", "bf16")}
    assert 4 < rel["bf16"] / rel["tf32"] < 32, rel


class HeadGemms(TorchDispatchMode):
    """Every matrix product with a vocabulary-sized operand: operand dtypes and the cuBLAS fp32-GEMM setting."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.calls = vocab, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name.lstrip("_").startswith(("mm", "addmm")) and any(self.vocab in a.shape for a in tensors):
            self.calls.append((name, tuple(a.dtype for a in tensors), torch.backends.cuda.matmul.fp32_precision))
        return func(*args, **(kwargs or {}))


def _head_gemms(run, vocab: int) -> list:
    before = torch.backends.cuda.matmul.fp32_precision
    with HeadGemms(vocab) as rec:
        run()
    assert torch.backends.cuda.matmul.fp32_precision == before  # restored: only the head ran with the setting
    return rec.calls


def _assert_mode(calls: list, mode: str) -> None:
    """The head GEMMs ran as ``mode`` does on CUDA: bf16 operands (the mode's setting for fp32 pinned to IEEE), or
    fp32 operands with TF32 on (tf32) / off (fp32)."""
    assert calls, "no head GEMM was recorded"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    setting = "tf32" if mode == "tf32" else "ieee"
    for name, dtypes, seen in calls:
        assert seen == setting, (mode, name, dtypes, seen)
        if name == "mm":  # the tile products: operands in the mode's dtype (the backward accumulates in fp32)
            assert set(dtypes[:2]) == {dtype}, (mode, name, dtypes)


@pytest.fixture
def cuda_condition(monkeypatch):
    """What a CUDA device decides in ``lm_head_loss``, on CPU: the configured mode applies."""
    monkeypatch.setattr(head, "_has_tensor_cores", lambda device: True)


def _small_head(vocab: int = 3000):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(16, 32, generator=g, requires_grad=True)
    weight = (torch.randn(vocab, 32, generator=g) * 0.2).requires_grad_()
    return hidden, weight, torch.randint(0, vocab, (16,), generator=g)


@pytest.mark.parametrize("mode", ["fp32", "tf32", "bf16"])
def test_cuda_path_runs_forward_and_backward_gemms_in_the_mode(cuda_condition, mode):
    hidden, weight, targets = _small_head()
    calls = _head_gemms(lambda: head.token_logprobs(hidden, weight, targets, 1.0, mode).sum().backward(), 3000)
    _assert_mode(calls, mode)
    # The forward's tile products and the backward's recompute (mm) and gradient GEMMs (addmm, fp32 accumulate).
    assert {name for name, *_ in calls} == {"mm", "addmm_"}, calls


def test_cpu_runs_the_head_in_fp32_whatever_the_key():
    hidden, weight, targets = _small_head()
    for mode in ("tf32", "bf16"):
        calls = _head_gemms(lambda: head.token_logprobs(hidden, weight, targets, 1.0, mode).sum().backward(), 3000)
        _assert_mode(calls, "fp32")
    with pytest.raises(ValueError, match="lm_head_precision='fp16'"):
        head.token_logprobs(hidden, weight, targets, 1.0, "fp16")


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_real_kernel_matches_the_model_of_its_mode(problem, exact, cuda_condition, mode):
    """TRL's kernel as the mode runs it (bf16 really runs on CPU; fp32 is the fp32 path) against the exact head,
    within the mode's derived bound plus fp32 evaluation noise: sums of up to 200,064 fp32 terms, ~sqrt(V) 2**-24
    = 3e-5 relative, allowed 1e-4 of the absolute-value sums."""
    h, w, t = problem
    hidden, weight = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = -head.token_logprobs(hidden, weight, t, 1.0, mode).mean()
    loss.backward()
    bound = derived_bounds(h, w, t, exact, mode)
    g_abs = exact["g"].abs()
    noise = {"loss": 1e-4 * float(exact["loss"]), "grad_h": 1e-4 * (g_abs @ w.double().abs()),
             "grad_w": 1e-4 * (g_abs.t() @ h.double().abs())}
    got = {"loss": loss.double(), "grad_h": hidden.grad.double(), "grad_w": weight.grad.double()}
    for k, v in got.items():
        assert ((v - exact[k]).abs() <= bound[k] + noise[k]).all(), (mode, k)


def _tiny_model(precision: str) -> Phi4FlashForCausalLM:
    cfg = Phi4FlashConfig(vocab_size=1000, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                          num_attention_heads=2, num_key_value_heads=2, sliding_window=8, bos_token_id=0,
                          eos_token_id=1, compute_backend="torch", lm_head_precision=precision)
    torch.manual_seed(0)
    return Phi4FlashForCausalLM(cfg)


@pytest.mark.parametrize("mode", ["tf32", "bf16"])
def test_loss_dpo_head_and_heldout_scoring_apply_the_configured_mode(cuda_condition, mode):
    model = _tiny_model(mode)
    ids = torch.randint(3, 1000, (2, 12), generator=torch.Generator().manual_seed(3))
    labels = ids.masked_fill(torch.arange(12) < 4, -100)
    _assert_mode(_head_gemms(lambda: model(ids, labels=labels, use_cache=False).loss.backward(), 1000), mode)
    with torch.no_grad():
        _assert_mode(_head_gemms(lambda: _summed_logps(model, ids, labels), 1000), mode)
    head.precision_trl_head(model)
    fused = lambda: model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,  # noqa: E731
                          fused_lm_head=True).loss.backward()
    _assert_mode(_head_gemms(fused, 1000), mode)


def test_the_key_is_validated_and_mirrored_by_the_training_schema():
    assert ModelConfig().lm_head_precision == Phi4FlashConfig().lm_head_precision == "tf32"
    with pytest.raises(ValueError, match="lm_head_precision"):
        Phi4FlashConfig(lm_head_precision="fp16")
