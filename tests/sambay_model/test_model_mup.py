"""muP++ model-side multipliers: the defaults are the official function; each multiplier does exactly its job."""
import math

import torch

import sambay_model  # noqa: F401
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM

VOCAB = 128


def tiny(**overrides) -> Phi4FlashConfig:
    values = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, sliding_window=8, bos_token_id=0, eos_token_id=1, compute_backend="torch")
    values.update(overrides)
    return Phi4FlashConfig(**values)


def logits_of(config: Phi4FlashConfig, state: dict, ids: torch.Tensor) -> torch.Tensor:
    model = Phi4FlashForCausalLM(config).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        return model(input_ids=ids).logits


def reference_state() -> dict:
    torch.manual_seed(0)
    return Phi4FlashForCausalLM(tiny()).state_dict()


IDS = torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))


def test_defaults_are_the_standard_parametrisation():
    cfg = tiny()
    assert (cfg.residual_multiplier, cfg.logits_multiplier, cfg.attention_multiplier) == (1.0, 1.0, None)
    state = reference_state()
    explicit = tiny(attention_multiplier=(64 // 4) ** -0.5, residual_multiplier=1.0, logits_multiplier=1.0)
    torch.testing.assert_close(logits_of(explicit, state, IDS), logits_of(cfg, state, IDS), rtol=0, atol=0)


def test_logits_multiplier_scales_logits_exactly():
    state = reference_state()
    base = logits_of(tiny(), state, IDS)
    torch.testing.assert_close(logits_of(tiny(logits_multiplier=0.25), state, IDS), base * 0.25, rtol=1e-6, atol=0)


def test_logits_multiplier_applies_in_the_tiled_training_loss():
    # The loss never builds full logits (sambay_model.lm_head_loss); it must still score multiplier * logits.
    state = reference_state()
    model = Phi4FlashForCausalLM(tiny(logits_multiplier=0.25)).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        loss = model(input_ids=IDS, labels=IDS).loss
    scaled = logits_of(tiny(), state, IDS)[:, :-1] * 0.25
    expected = torch.nn.functional.cross_entropy(scaled.reshape(-1, VOCAB), IDS[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert model.config.lm_head_multiplier == 0.25  # the name TRL's fused head reads (see test_model_trl)


def test_residual_multiplier_weights_every_branch():
    state = reference_state()
    # With every branch switched off, a position's logits depend on its own token only.
    off = logits_of(tiny(residual_multiplier=0.0), state, IDS)
    other = IDS.clone()
    other[:, :-1] = torch.roll(IDS[:, :-1], 1, dims=1)
    torch.testing.assert_close(logits_of(tiny(residual_multiplier=0.0), state, other)[:, -1], off[:, -1])
    half = logits_of(tiny(residual_multiplier=0.5), state, IDS)
    assert (half - logits_of(tiny(), state, IDS)).abs().max() > 1e-3


def test_attention_multiplier_changes_attention_and_round_trips(tmp_path):
    state = reference_state()
    scaled = tiny(attention_multiplier=math.sqrt(128) / 16, residual_multiplier=1 / 4, logits_multiplier=2.0)
    assert (logits_of(tiny(attention_multiplier=1.0), state, IDS) - logits_of(tiny(), state, IDS)).abs().max() > 1e-4
    scaled.save_pretrained(tmp_path)
    again = Phi4FlashConfig.from_pretrained(tmp_path)
    assert (again.attention_multiplier, again.residual_multiplier, again.logits_multiplier) == (
        scaled.attention_multiplier, 0.25, 2.0)
