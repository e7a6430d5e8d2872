"""The LM-head loss in fp32 vocabulary tiles (sambay_model.lm_head_loss): equal to the full-logits loss, fp32
under autocast, and bounded in memory at the Phi-4-mini vocabulary. These run on CPU, where the head is fp32
whatever ``lm_head_precision`` says; its CUDA modes (tf32, bf16) are tested in test_lm_head_precision.py."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sambay_model  # noqa: F401
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
from sambay_model.lm_head_loss import VOCAB_TILE, chunked_causal_lm_loss, shifted_token_logprobs

# More than two vocabulary tiles, the last one partial, so the tiling itself is exercised.
VOCAB = 2 * VOCAB_TILE + 123


def build(**overrides) -> Phi4FlashForCausalLM:
    values = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, sliding_window=8, bos_token_id=0, eos_token_id=1, compute_backend="torch")
    values.update(overrides)
    torch.manual_seed(0)
    return Phi4FlashForCausalLM(Phi4FlashConfig(**values)).train()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("logits_multiplier", [1.0, 0.37])
@pytest.mark.parametrize("num_items", [None, 50])
def test_chunked_loss_and_gradients_equal_the_full_logits_computation(logits_multiplier, num_items, causal_lm_loss):
    model = build(logits_multiplier=logits_multiplier)
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, 7] = -100

    out = model(ids, labels=labels, use_cache=False, num_items_in_batch=num_items, return_logits=True)
    out.loss.backward()
    chunked = _grads(model)
    model.zero_grad()
    # The reference: full fp32 logits (muP++ multiplier included) and a plain cross-entropy over them.
    reference = causal_lm_loss(out.logits, labels, num_items)
    full = model(ids, use_cache=False).logits
    causal_lm_loss(full, labels, num_items).backward()
    plain = _grads(model)

    torch.testing.assert_close(out.loss, reference, rtol=1e-5, atol=1e-6)
    assert chunked.keys() == plain.keys()
    assert "model.embed_tokens.weight" in chunked  # the tied head's gradient reaches the embedding
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], rtol=1e-4, atol=1e-7, msg=name)


def test_per_token_logprobs_match_log_softmax():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2, 9, 16, generator=g), torch.randn(VOCAB, 16, generator=g)
    labels = torch.randint(0, VOCAB, (2, 9), generator=g)
    labels[1, 3:] = -100
    logps, mask = shifted_token_logprobs(hidden, weight, labels, logits_multiplier=2.0)
    full = torch.log_softmax(2.0 * hidden[:, :-1] @ weight.t(), dim=-1)
    expected = full.gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-5)
    assert mask.sum() == 8 + 2 and bool((logps[~mask] == 0).all())


def test_all_ignored_micro_batch_gives_a_differentiable_zero():
    model = build()
    ids = torch.randint(3, VOCAB, (1, 6))
    out = model(ids, labels=torch.full_like(ids, -100), use_cache=False)
    assert out.loss.item() == 0.0 and out.logits is None
    out.loss.backward()
    assert float(model.model.embed_tokens.weight.grad.abs().sum()) == 0.0


def test_head_and_cross_entropy_stay_fp32_under_autocast():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 65, 64, generator=g)
    weight = torch.randn(VOCAB, 64, generator=g) * 0.5
    labels = torch.randint(0, VOCAB, (1, 65), generator=g)
    fp32 = F.cross_entropy(hidden[0, :-1] @ weight.t(), labels[0, 1:])
    bf16 = F.cross_entropy((hidden[0, :-1].bfloat16() @ weight.bfloat16().t()).float(), labels[0, 1:])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_causal_lm_loss(hidden, weight, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, fp32, rtol=1e-5, atol=1e-5)
    # A head computed in bf16 would be this far off: the check above can tell the two apart.
    assert abs(float(bf16 - fp32)) > 1e-3


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource
    import torch
    from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
    torch.manual_seed(0)
    # 2 heads: the CPU torch attention path materialises [heads, T, T] scores, which is not what this test
    # measures (the GPU path runs flash attention); the head is the part that scales with the vocabulary.
    cfg = Phi4FlashConfig(vocab_size=200_064, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=2, num_key_value_heads=2, sliding_window=128, bos_token_id=0,
                          eos_token_id=1, compute_backend="torch")
    model = Phi4FlashForCausalLM(cfg).train()
    ids = torch.randint(3, cfg.vocab_size, (1, 8192))
    out = model(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "loss": out.loss.item(), "has_logits": out.logits is not None,
                      "head_grad_finite": bool(torch.isfinite(model.lm_head.weight.grad).all())}))
""")


@pytest.mark.slow
def test_200k_vocab_8192_token_row_forward_backward_stays_under_3gb():
    # Full fp32 logits alone would be 6.6 GB per copy here (8192 x 200,064 x 4 bytes), several alive in backward.
    # A fresh process, so the peak RSS is this step's and not the test session's.
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=1200,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["peak_rss_bytes"] < 3 * 2**30, result
    assert not result["has_logits"] and result["head_grad_finite"]
    assert 11.0 < result["loss"] < 13.5  # ~ln(200,064) = 12.2 for a fresh init
