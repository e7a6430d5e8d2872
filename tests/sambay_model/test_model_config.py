"""Phi4FlashConfig: official keys and defaults, the released config, validation, layer roles, parameter count."""
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import sambay_model  # noqa: F401
from sambay_model import LayerRole, Phi4FlashConfig, Phi4FlashForCausalLM


def test_class_defaults_are_the_released_architecture():
    """The class defaults are the one place the official architecture is written (the released config.json)."""
    c = Phi4FlashConfig()
    expected = dict(vocab_size=200064, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
                    num_attention_heads=40, num_key_value_heads=20, resid_pdrop=0.0, embd_pdrop=0.0,
                    attention_dropout=0.0, hidden_act="silu", max_position_embeddings=262144, initializer_range=0.02,
                    layer_norm_eps=1e-5, use_cache=True, tie_word_embeddings=True, rope_theta=10000.0,
                    bos_token_id=None, eos_token_id=None, pad_token_id=None, mb_per_layer=2, mamba_d_state=16,
                    mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=160, mamba_conv_bias=True, mamba_proj_bias=False,
                    use_diff_attn=True, use_gmu=True, backbone="sambay", compute_backend="auto",
                    residual_multiplier=1.0, logits_multiplier=1.0, attention_multiplier=None)
    for key, value in expected.items():
        assert getattr(c, key) == value, key
    assert c.sliding_window == [512 if i < 16 and i % 2 else None for i in range(32)]
    released = Phi4FlashConfig.phi4_mini_flash_reasoning()
    assert {k: getattr(released, k) for k in expected if not k.endswith("token_id")} == \
        {k: getattr(c, k) for k in expected if not k.endswith("token_id")}


def test_released_phi4_mini_flash_config():
    c = Phi4FlashConfig.phi4_mini_flash_reasoning()
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (200064, 2560, 10240, 32)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.mamba_dt_rank) == (40, 20, 64, 160)
    assert c.sliding_window == [512 if i < 16 and i % 2 else None for i in range(32)]
    assert c.max_position_embeddings == 262144 and c.tie_word_embeddings
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (199999, 199999, 199999)
    roles = [c.layer_role(i) for i in range(32)]
    R = LayerRole
    assert roles == [R.MAMBA, R.SWA] * 8 + [R.MEMORY_MAMBA, R.FULL_ATTN] + [R.GMU, R.CROSS_ATTN] * 7
    assert c.layers_block_type == ["mamba", "attention"] * 9 + ["mamba", "shared_attention"] * 7


def test_layer_roles_read_and_write_as_their_plain_names():
    """Roles are a str-valued enum: whatever held the plain names (logs, JSON, string comparisons) is unchanged."""
    roles = [Phi4FlashConfig(num_hidden_layers=8).layer_role(i) for i in range(8)]
    names = ["mamba", "swa", "mamba", "swa", "memory_mamba", "full_attn", "gmu", "cross_attn"]
    assert roles == names and {LayerRole.SWA: 1}["swa"] == 1
    assert json.dumps(roles) == json.dumps(names)
    assert [f"{r}" for r in roles] == [str(r) for r in roles] == names
    assert [r.is_mamba for r in roles] == [True, False, True, False, True, False, False, False]


def test_official_model_has_exactly_the_published_parameter_count():
    with torch.device("meta"):
        model = Phi4FlashForCausalLM(Phi4FlashConfig.phi4_mini_flash_reasoning())
    assert sum(p.numel() for p in model.parameters()) == 3_852_562_944
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["model.layers.17.attn.Wqkv.weight"] == (5120, 2560)
    assert shapes["model.layers.19.attn.Wqkv.weight"] == (2560, 2560)
    assert shapes["model.layers.16.attn.x_proj.weight"] == (192, 5120)
    assert shapes["model.layers.18.attn.in_proj.weight"] == (5120, 2560)
    assert shapes["model.layers.31.attn.inner_cross_attn.subln.weight"] == (128,)


def test_variant_roles():
    c = Phi4FlashConfig(num_hidden_layers=8, use_gmu=False)
    R = LayerRole
    assert [c.layer_role(i) for i in range(8)] == [R.MAMBA, R.SWA, R.MAMBA, R.SWA, R.MEMORY_MAMBA, R.FULL_ATTN,
                                                  R.CROSS_ATTN, R.CROSS_ATTN]
    assert c.layers_block_type == ["mamba", "attention"] * 3 + ["shared_attention"] * 2
    t = Phi4FlashConfig(num_hidden_layers=8, backbone="transformer")
    assert {t.layer_role(i) for i in range(8)} == {LayerRole.FULL_ATTN}


@pytest.mark.parametrize("bad, key", [
    (dict(num_hidden_layers=6), "num_hidden_layers"),
    (dict(backbone="mamba"), "backbone"),
    (dict(compute_backend="tpu"), "compute_backend"),
    (dict(num_key_value_heads=3, num_attention_heads=9, hidden_size=36), "num_key_value_heads"),
    (dict(sliding_window=[8, 8]), "sliding_window"),
    (dict(mb_per_layer=3), "mb_per_layer"),
])
def test_invalid_configs_name_the_key(bad, key):
    with pytest.raises(ValueError, match=key):
        Phi4FlashConfig(**bad)


def test_config_round_trips_and_drops_remote_code_pointers(tmp_path):
    c = Phi4FlashConfig(num_hidden_layers=8, sliding_window=16, use_gmu=False, backbone="sambay",
                        compute_backend="torch", auto_map={"AutoConfig": "configuration_phi4flash.Phi4FlashConfig"})
    c.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "phi4flash" and not saved.get("auto_map")
    back = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(back, Phi4FlashConfig)
    assert back.sliding_window == c.sliding_window and back.use_gmu is False and back.compute_backend == "torch"


def test_auto_model_builds_our_class():
    c = Phi4FlashConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=4,
                        num_attention_heads=2, num_key_value_heads=2)
    assert isinstance(AutoModelForCausalLM.from_config(c), Phi4FlashForCausalLM)


def test_transformer_baseline_is_archscale_transformer_plus_plus():
    """RMSNorm everywhere, no bias in any linear layer, no differential attention, SwiGLU, RoPE."""
    c = Phi4FlashConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, backbone="transformer")
    assert c.use_diff_attn is False
    model = Phi4FlashForCausalLM(c)
    norms = [m for n, m in model.named_modules() if n.endswith("layernorm")]
    assert len(norms) == 2 * 4 + 1 and all(isinstance(m, torch.nn.RMSNorm) for m in norms)
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert not any("lambda" in n or "subln" in n for n, _ in model.named_parameters())
    assert all(layer.attn.rope_theta == c.rope_theta for layer in model.model.layers)
    with pytest.raises(ValueError, match="use_diff_attn"):
        Phi4FlashConfig(num_hidden_layers=4, backbone="transformer", use_diff_attn=True)


def test_samba_yoco_keeps_the_sambay_choices_it_is_compared_with():
    kw = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=8, num_attention_heads=4,
              num_key_value_heads=2, sliding_window=8)
    for da in (True, False):
        sambay, yoco = (Phi4FlashForCausalLM(Phi4FlashConfig(use_gmu=g, use_diff_attn=da, **kw)) for g in (True, False))
        kinds = lambda m: {type(x).__name__ for x in m.modules()} - {"Phi4FlashGMU"}  # noqa: E731
        assert kinds(sambay) == kinds(yoco)
        assert yoco.config.use_diff_attn is da and sambay.config.use_diff_attn is da
        assert {type(x) for n, x in yoco.named_modules() if n.endswith("layernorm")} == {torch.nn.LayerNorm}
        assert all(layer.attn.Wqkv.bias is not None for layer in yoco.model.layers
                   if layer.role == LayerRole.CROSS_ATTN)


def test_rope_rotates_in_fp32_for_bf16_inputs():
    from sambay_model.modeling_phi4flash import apply_rope

    x = torch.randn(2, 4, 3, 64).to(torch.bfloat16)
    positions = torch.tensor([100_000, 200_001, 262_143])
    # bf16 in, bf16 out, but nothing rounded to bf16 in between (bf16 cos/sin and products would be).
    assert torch.equal(apply_rope(x, positions, 10000.0), apply_rope(x.float(), positions, 10000.0).to(torch.bfloat16))
