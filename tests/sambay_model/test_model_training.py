"""Training-side behaviour: packed documents, loss, gradient checkpointing, dtype policy, HF/TRL plumbing."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sambay_model  # noqa: F401
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM

VOCAB = 128


def tiny_config(**overrides) -> Phi4FlashConfig:
    values = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, sliding_window=8, bos_token_id=0, eos_token_id=1, compute_backend="torch")
    values.update(overrides)
    return Phi4FlashConfig(**values)


def build(seed=0, **overrides) -> Phi4FlashForCausalLM:
    torch.manual_seed(seed)
    return Phi4FlashForCausalLM(tiny_config(**overrides))


VARIANTS = [
    pytest.param({}, id="sambay"),
    pytest.param({"use_gmu": False, "use_diff_attn": False}, id="samba_yoco_nodiff"),
    pytest.param({"backbone": "transformer"}, id="transformer"),
]


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("overrides", VARIANTS)
@pytest.mark.parametrize("boundary", ["doc_ids", "position_ids"])
def test_packed_row_equals_documents_run_alone(overrides, boundary):
    model = build(**overrides)
    g = torch.Generator().manual_seed(0)
    # Documents longer than the window (8) and the conv width, and a 1-token document.
    lengths = [11, 1, 14, 6]
    docs = [torch.randint(3, VOCAB, (1, n), generator=g) for n in lengths]
    packed = torch.cat(docs, dim=1)
    if boundary == "doc_ids":
        kwargs = {"doc_ids": torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1)}
    else:
        kwargs = {"position_ids": torch.cat([torch.arange(n) for n in lengths])[None]}

    model.zero_grad()
    out = model(packed, use_cache=False, **kwargs).logits
    out.float().pow(2).mean(-1).sum().backward()  # a loss that reads every position's logits
    packed_grads = _grads(model)

    model.zero_grad()
    alone = []
    for d in docs:
        logits = model(d, use_cache=False).logits
        logits.float().pow(2).mean(-1).sum().backward()
        alone.append(logits.detach())
    alone_grads = _grads(model)

    torch.testing.assert_close(out.detach(), torch.cat(alone, dim=1), rtol=1e-5, atol=1e-5)
    assert packed_grads.keys() == alone_grads.keys()
    for name in packed_grads:
        torch.testing.assert_close(packed_grads[name], alone_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_packing_changes_nothing_only_when_masked():
    """Sanity check of the test above: without boundaries the second document does see the first."""
    model = build()
    a, b = torch.randint(3, VOCAB, (1, 6)), torch.randint(3, VOCAB, (1, 6))
    with torch.no_grad():
        joined = model(torch.cat([a, b], 1), use_cache=False).logits[:, 6:]
        alone = model(b, use_cache=False).logits
    assert (joined - alone).abs().max() > 1e-3


def test_loss_follows_hf_convention():
    model = build()
    ids = torch.randint(3, VOCAB, (2, 12))
    labels = ids.clone()
    labels[0, :4] = -100
    out = model(ids, labels=labels, use_cache=False, return_logits=True)
    logits = out.logits.detach().float()
    token_losses = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), reduction="none",
                                   ignore_index=-100)
    n_targets = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(out.loss.detach(), token_losses.sum() / n_targets)
    out_n = model(ids, labels=labels, use_cache=False, num_items_in_batch=torch.tensor(50))
    torch.testing.assert_close(out_n.loss.detach(), token_losses.sum() / 50)
    # logits_to_keep never truncates what the loss needs.
    out_k = model(ids, labels=labels, use_cache=False, logits_to_keep=1)
    torch.testing.assert_close(out_k.loss.detach(), out.loss.detach())
    assert out_k.logits.shape == (2, 1, VOCAB)
    torch.testing.assert_close(out_k.logits, out.logits[:, -1:])
    # With labels, full logits only on request (they are the largest tensors of a step).
    out_default = model(ids, labels=labels, use_cache=False)
    assert out_default.logits is None
    torch.testing.assert_close(out_default.loss, out.loss)


def test_loss_is_fp32_for_a_bf16_model(causal_lm_loss):
    model = build().to(torch.bfloat16)
    ids = torch.randint(2, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids, use_cache=False, return_logits=True)
    assert out.logits.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32
    # The loss comes from fp32 head tiles; the bf16 logits beside it differ from those by their rounding only.
    torch.testing.assert_close(out.loss, causal_lm_loss(out.logits, ids), rtol=1e-2, atol=1e-2)


def test_gradient_checkpointing_gives_equal_gradients():
    model = build().train()
    ids = torch.randint(3, VOCAB, (2, 20))
    doc_ids = torch.tensor([[0] * 9 + [1] * 11, [0] * 20])
    model(ids, labels=ids, doc_ids=doc_ids, use_cache=False).loss.backward()
    plain = _grads(model)
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    model(ids, labels=ids, doc_ids=doc_ids, use_cache=True).loss.backward()
    ckpt = _grads(model)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


FP32_SUFFIXES = ("A_log", ".D", "lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")


@pytest.mark.parametrize("cast", ["to_bf16", "bfloat16", "half"])
def test_ssm_and_lambda_params_stay_fp32_when_cast(cast):
    model = build()
    if cast == "to_bf16":
        model.to(torch.bfloat16)
    elif cast == "bfloat16":
        model.bfloat16()
    else:
        model.half()
    low = torch.float16 if cast == "half" else torch.bfloat16
    n_fp32 = 0
    for name, p in model.named_parameters():
        if name.endswith(FP32_SUFFIXES):
            assert p.dtype == torch.float32, name
            n_fp32 += 1
        else:
            assert p.dtype == low, name
    assert n_fp32 == 3 * 2 + 4 * 4  # 3 Mamba layers (A_log, D) + 4 attention layers (4 lambdas)
    with torch.no_grad():
        out = model(torch.randint(3, VOCAB, (1, 10)), use_cache=False)
    assert out.logits.dtype == low and torch.isfinite(out.logits.float()).all()
    # A cast to float64 is not undone: exactness tests may run the model in float64.
    model.double()
    assert model.model.layers[0].attn.A_log.dtype == torch.float64


def test_residual_stream_is_fp32_in_bf16():
    model = build().to(torch.bfloat16)
    seen = []
    model.model.layers[3].register_forward_hook(lambda m, a, o: seen.append(o[0].dtype))
    with torch.no_grad():
        model(torch.randint(3, VOCAB, (1, 5)), use_cache=False)
    assert seen == [torch.float32]


def test_trl_facing_api():
    model = build()
    assert model.base_model_prefix == "model" and model.base_model is model.model
    head = model.get_output_embeddings()
    assert isinstance(head, nn.Linear) and head.weight is model.model.embed_tokens.weight
    assert model.supports_gradient_checkpointing
    assert model.config.auto_map == {}
    ids = torch.randint(3, VOCAB, (2, 7))
    # A trainer's logits_to_keep reaching the backbone is ignored (TRL's fused head reads every position).
    hidden = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                         logits_to_keep=1).last_hidden_state
    assert hidden.shape[1] == 7
    torch.testing.assert_close(head(hidden), model(ids, use_cache=False).logits)
    out = model(input_ids=ids, labels=ids, num_items_in_batch=10, logits_to_keep=0, use_cache=False,
                some_trainer_kwarg=True)
    assert out.loss is not None


@torch.no_grad()
def test_init_follows_spec():
    cfg = tiny_config(hidden_size=128, intermediate_size=256, initializer_range=0.02)
    model = build(**{k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size")})
    L = cfg.num_hidden_layers
    mamba = model.model.layers[0].attn
    n = cfg.mamba_d_state
    s4d_real = torch.log(torch.arange(1, n + 1, dtype=torch.float32))
    torch.testing.assert_close(mamba.A_log, s4d_real.expand_as(mamba.A_log))
    assert torch.equal(mamba.D, torch.ones_like(mamba.D))
    dt = F.softplus(mamba.dt_proj.bias)
    assert float(dt.min()) >= 1e-4 - 1e-9 and float(dt.max()) <= 0.1 + 1e-6
    assert abs(float(mamba.in_proj.weight.std()) - 0.02) < 0.002
    assert abs(float(mamba.out_proj.weight.std()) - 0.02 / (2 * L) ** 0.5) < 0.0005
    assert abs(float(model.model.layers[1].mlp.fc2.weight.std()) - 0.02 / (2 * L) ** 0.5) < 0.0005
    attn = model.model.layers[1].attn
    assert torch.equal(attn.Wqkv.bias, torch.zeros_like(attn.Wqkv.bias))
    lambdas = torch.cat([attn.inner_cross_attn.lambda_q1, attn.inner_cross_attn.lambda_k1,
                         attn.inner_cross_attn.lambda_q2, attn.inner_cross_attn.lambda_k2])
    assert 0.05 < float(lambdas.std()) < 0.15
    ln = model.model.layers[0].input_layernorm
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))
    assert abs(float(model.model.embed_tokens.weight.std()) - 0.02) < 0.002
