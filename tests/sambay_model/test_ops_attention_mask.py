"""FlexAttention's block masks and compiles in a whole SambaY model (``ops.triton_attention``), on CPU.

GPU condition, emulated: ``compute_backend="triton"`` on CPU tensors (``flex_on_cpu``). Attention runs the real
FlexAttention adapter (eager FlexAttention on CPU, or, for the compile test, the product's ``torch.compile``
settings with the ``eager`` backend: the same dynamo graphs a GPU compiles, run by PyTorch); the Mamba scan and
conv run their PyTorch references, which share the Triton kernels' contract (the kernels themselves are tested in
``test_ops_triton.py``). torch 2.13 refuses FlexAttention's backward on CPU at its entry check; it is lifted here as
in ``triton_interpreter_cases.py``.
"""
import random
from types import SimpleNamespace

import pytest
import torch
import torch._dynamo
import torch.nn.attention.flex_attention as torch_flex
import torch.nn.functional as F
from torch._dynamo.utils import counters

from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
from sambay_model.length_buckets import MIN_PADDED_LENGTH, PAD_MULTIPLE, bucket_length, pad_multiple
from sambay_model.ops import backend as backend_mod
from sambay_model.ops import dispatch as dispatch_mod
from sambay_model.ops import triton_attention
from sambay_model.ops.conv import causal_conv1d_torch
from sambay_model.ops.selective_scan import selective_scan_torch, selective_state_update_torch

# FlexAttention runs unfused on CPU on purpose here (see the module docstring).
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

VOCAB = 64
# Two sliding windows (layers 1 and 3) and no window (the full-attention layer 5, cross-attention layer 7).
WINDOWS = [None, 4, None, 6, None, None, None, None]


def tiny_model(num_layers: int = 8, windows=None, seed: int = 0) -> Phi4FlashForCausalLM:
    values = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, sliding_window=windows or 4, bos_token_id=0,
                  eos_token_id=1, pad_token_id=2, initializer_range=0.1, compute_backend="triton")
    torch.manual_seed(seed)
    return Phi4FlashForCausalLM(Phi4FlashConfig(**values))


@pytest.fixture
def flex_on_cpu(monkeypatch):
    """The triton backend on CPU: FlexAttention for attention, the PyTorch references for the Mamba ops."""
    mamba = {"scan": SimpleNamespace(selective_scan_triton=selective_scan_torch,
                                     selective_state_update_triton=selective_state_update_torch),
             "conv": SimpleNamespace(causal_conv1d_triton=causal_conv1d_torch)}
    monkeypatch.setattr(backend_mod, "triton_interpreted", lambda: True)
    monkeypatch.setattr(dispatch_mod, "_triton", lambda name: triton_attention if name == "attention" else mamba[name])
    monkeypatch.setattr(torch_flex, "_validate_device", lambda query, key, value: None)


@pytest.fixture
def flex_calls(monkeypatch):
    """``{"mask": [(Tq, Tk), ...], "attention": n}``: block masks built (``create_block_mask``, as the adapter calls
    it) and attention calls that reached FlexAttention's adapter."""
    seen = {"mask": [], "attention": 0}
    build, attend = triton_attention.create_block_mask, triton_attention.attention_flex

    def counting_build(mask_mod, B, H, Q_LEN, KV_LEN, **kw):
        seen["mask"].append((Q_LEN, KV_LEN))
        return build(mask_mod, B, H, Q_LEN, KV_LEN, **kw)

    def counting_attend(*a, **k):
        seen["attention"] += 1
        return attend(*a, **k)

    monkeypatch.setattr(triton_attention, "create_block_mask", counting_build)
    monkeypatch.setattr(triton_attention, "attention_flex", counting_attend)
    return seen


def _layout(kind: str, T: int):
    """Packed documents (``doc_ids``) or right padding (``attention_mask``, as TRL pads DPO batches)."""
    if kind == "packed":
        return dict(doc_ids=torch.tensor([[0] * 9 + [1] * (T - 9), [0] * 3 + [1] * (T - 3)]))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T - 7:] = 0
    return dict(attention_mask=mask)


def _train_step(model, input_ids, layout) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    labels = input_ids.masked_fill(layout.get("attention_mask", torch.ones_like(input_ids)) == 0, -100)
    loss = model(input_ids, labels=labels, use_cache=False, **layout).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("kind", ["packed", "padded"])
def test_one_block_mask_per_window_per_training_step(flex_on_cpu, flex_calls, kind, reentrant):
    """8 layers: 2 sliding-window layers (windows 4 and 6), the full-attention and the cross-attention layer, all
    with differential attention (2 attention calls each) under activation checkpointing (each layer's forward runs
    twice): 16 FlexAttention calls, 3 distinct windows (4, 6, none), so 3 block masks, each built once."""
    model = tiny_model(windows=WINDOWS)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    T = 24
    input_ids = torch.randint(3, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    layout = _layout(kind, T)
    loss, grads = _train_step(model, input_ids, layout)
    assert flex_calls["attention"] == 4 * 2 * 2  # the recompute really ran, through FlexAttention
    assert flex_calls["mask"] == [(T, T)] * len({w for w in WINDOWS[1::2]} | {None})
    # The shared masks are the right ones: the same step through pure PyTorch attention gives the same loss and
    # gradients (a window's mask reused for another window would not).
    model.config.compute_backend = "torch"
    ref_loss, ref_grads = _train_step(model, input_ids, layout)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) == len(list(model.parameters()))
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_each_forward_builds_its_own_masks(flex_on_cpu, flex_calls):
    """A mask belongs to one forward (its document layout): a second forward with other documents builds anew."""
    model = tiny_model(num_layers=4).eval()
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(ids, doc_ids=torch.tensor([[0] * 6 + [1] * 6, [0] * 12]), use_cache=False)
        model(ids, doc_ids=torch.tensor([[0] * 3 + [1] * 9, [0] * 12]), use_cache=False)
    # 4 layers: one sliding-window layer (window 4) and one full-attention layer per forward.
    assert flex_calls["mask"] == [(12, 12)] * 4


# ------------------------------------------------------------------------------------------- bounded compiles


@pytest.fixture
def compiled_graphs(monkeypatch):
    """FlexAttention compiled with the product's settings (``triton_attention.compiled``) and a backend that records
    each graph dynamo hands it, then runs it eagerly (what ``backend="eager"`` does). Dynamo's caches are reset
    before and after, so other tests neither add graphs here nor find these."""
    graphs = {"create_block_mask": 0, "flex_attention": 0}

    def recording(name):
        def backend(gm, example_inputs):
            graphs[name] += 1
            return gm.forward
        return backend

    fns = (triton_attention.compiled(torch_flex.create_block_mask, recording("create_block_mask")),
           triton_attention.compiled(torch_flex.flex_attention, recording("flex_attention")))
    monkeypatch.setattr(triton_attention, "flex_functions", lambda device: fns)
    torch._dynamo.reset()
    counters.clear()
    yield graphs
    torch._dynamo.reset()
    triton_attention.compiled.cache_clear()


def _dpo_batch(rng: random.Random, rows: int):
    """A batch as TRL pads DPO rows on CUDA: right padding with an attention mask, to a multiple of 128."""
    lengths = [rng.randint(5, 300) for _ in range(rows)]
    width = -(-max(lengths) // pad_multiple("cuda")) * pad_multiple("cuda")
    ids = torch.full((rows, width), 2, dtype=torch.long)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(3, VOCAB, (n,))
        mask[r, :n] = 1
    return ids, mask


def _prompts(rng: random.Random, rows: int):
    """Prompts as ``train.evals.generation`` pads them on CUDA: left padding, to the length bucket."""
    lengths = [rng.randint(5, 300) for _ in range(rows)]
    width = bucket_length(max(lengths), "cuda")
    ids = torch.full((rows, width), 2, dtype=torch.long)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, width - n:] = torch.randint(3, VOCAB, (n,))
        mask[r, width - n:] = 1
    return ids, mask


def test_twenty_lengths_compile_a_bounded_number_of_graphs(flex_on_cpu, compiled_graphs):
    """20 DPO training steps and 20 generations (prefill, then decode steps that need no mask), each at its own
    random length, through a model with sliding-window and full attention; held-out scoring is the same no-grad
    forward as the prefill.

    Bound: graphs depend neither on the length (dynamic compile) nor on the window (one mask structure), only on
    the grad mode (flex_attention; the mask is built under no_grad) and on dynamo's specialisation of a size of 1:
    a DPO batch of one 128-token block (TRL pads to a multiple, no floor); the generation widths have the two-block
    floor. So at most 2 graphs of create_block_mask and 3 of flex_attention (2 with grad, 1 without), against
    dynamo's limit of 8 per function. The same run with ``dynamic=False`` compiled a graph per length and window."""
    model = tiny_model(num_layers=4)
    rng = random.Random(0)
    widths = {"dpo": set(), "prompt": set()}
    torch.manual_seed(3)
    for _ in range(20):
        ids, mask = _dpo_batch(rng, rows=2)
        widths["dpo"].add(ids.shape[1])
        model.train()
        model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), use_cache=False).loss.backward()
        ids, mask = _prompts(rng, rows=2)
        widths["prompt"].add(ids.shape[1])
        model.eval()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=2,
                           eos_token_id=None)
    # The lengths really varied, one-block DPO batches included.
    assert widths == {"dpo": {128, 256, 384}, "prompt": {256, 384}}, widths
    assert compiled_graphs["create_block_mask"] <= 2 and compiled_graphs["flex_attention"] <= 3, compiled_graphs
    assert compiled_graphs["flex_attention"] >= 2  # it did compile: one graph per grad mode at least
    # No fallback: every frame dynamo saw compiled (fullgraph=True would raise at the recompile limit anyway).
    assert counters["frames"]["total"] == counters["frames"]["ok"]


# ------------------------------------------------------------------------------------------- padding changes nothing


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_bucket_padding_leaves_real_token_logits_unchanged(flex_on_cpu, backend):
    """Left padding (generation prefill) and right padding with a mask (DPO batches), each to the next bucket:
    the logits of every real token equal those of the unpadded batch."""
    model = tiny_model(num_layers=4).eval()
    model.config.compute_backend = backend
    g = torch.Generator().manual_seed(4)
    lengths = (37, 20)
    width = bucket_length(max(lengths), "cuda")
    rows = [torch.randint(3, VOCAB, (n,), generator=g) for n in lengths]
    with torch.no_grad():
        for side in ("left", "right"):
            for bucket in (max(lengths), width):
                ids = torch.full((2, bucket), 2, dtype=torch.long)
                mask = torch.zeros(2, bucket, dtype=torch.long)
                for r, row in enumerate(rows):
                    span = slice(bucket - len(row), bucket) if side == "left" else slice(0, len(row))
                    ids[r, span], mask[r, span] = row, 1
                logits = model(ids, attention_mask=mask, use_cache=False).logits
                real = [logits[r][mask[r].bool()] for r in range(2)]
                if bucket == width:
                    for got, want in zip(real, unpadded, strict=True):
                        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
                else:
                    unpadded = real
    assert width == MIN_PADDED_LENGTH > max(lengths)  # the padded case really added padding to every row


def test_bucket_length():
    """On CUDA: whole 128-token blocks, at least two; on CPU (nothing compiled) the length itself."""
    assert [bucket_length(n, "cuda") for n in (1, 127, 256, 257, 300)] == [256, 256, 256, 384, 384]
    assert [bucket_length(n, "cpu") for n in (1, 37, 300)] == [1, 37, 300]
    assert pad_multiple(torch.device("cuda", 0)) == PAD_MULTIPLE and pad_multiple("cpu") == 1
