"""The muP++ recipe option sets the model-side multipliers of docs/architecture.md §14 on the model config."""
import math

from train.config import ModelConfig, MupConfig
from train.runtime.model_build import hf_config, mup_multipliers


def test_multipliers_follow_spec_8_3():
    model = ModelConfig(hidden_size=256, num_hidden_layers=8, num_attention_heads=2, num_key_value_heads=1,
                        intermediate_size=512)
    got = mup_multipliers(model, MupConfig(enabled=True, base_depth=16, base_head_dim=128))
    assert got == {"residual_multiplier": 1 / math.sqrt(16), "logits_multiplier": 2.0,
                   "attention_multiplier": math.sqrt(128) / 128}


def test_hf_config_applies_multipliers_only_when_enabled():
    model = ModelConfig(hidden_size=128, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=256, sliding_window=16)
    standard = hf_config(model, vocab_size=512, eos_token_id=0, mup=MupConfig(enabled=False))
    assert (standard.residual_multiplier, standard.logits_multiplier, standard.attention_multiplier) == (1.0, 1.0, None)
    mup = hf_config(model, vocab_size=512, eos_token_id=0, mup=MupConfig(enabled=True))
    assert mup.residual_multiplier == 0.25 and mup.logits_multiplier == 2.0
    assert mup.attention_multiplier == math.sqrt(128) / 32
