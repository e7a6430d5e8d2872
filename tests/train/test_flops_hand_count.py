"""FLOPs/token of the official Phi-4-mini-flash config against a count written out by hand from
docs/architecture.md §1-§7."""
import pytest

from sambay_model import Phi4FlashConfig
from train.engine.flops import flops_per_token, mean_keys, mfu


def official(**overrides):
    return Phi4FlashConfig(**overrides)  # the class defaults are the official architecture


def test_official_config_hand_count_at_8k():
    T, w = 8192, 512
    d, inter, V = 2560, 10240, 200064
    di, N, k, r = 5120, 16, 4, 160
    H, hd, kv = 40, 64, 20
    # Per layer, forward, per token (2 FLOPs per multiply-add).
    mlp = 2 * 2560 * 20480 + 2 * 10240 * 2560                        # fc1 + fc2 = 157,286,400
    assert mlp == 157_286_400
    mamba = (2 * 2560 * 10240 + 2 * 5120 * 4 + 2 * 5120 * 192 + 2 * 160 * 5120 + 2 * 5120 * 2560
             + 9 * 5120 * 16)                                         # in, conv, x, dt, out, scan
    assert mamba == 83_025_920  # 52,428,800 + 40,960 + 1,966,080 + 1,638,400 + 26,214,400 + 737,280
    self_proj = 2 * 2560 * 5120 + 2 * 2560 * 2560                     # Wqkv [Q|K|V] + out_proj
    cross_proj = 2 * 2560 * 2560 + 2 * 2560 * 2560                    # Wqkv (queries) + out_proj
    gmu = 2 * 2560 * 5120 + 2 * 5120 * 2560
    per_key = 2 * 40 * 64 + 2 * 40 * 128                             # scores + differential values [V1|V2]
    assert per_key == 15_360
    swa_keys = (512 * 513 / 2 + (8192 - 512) * 512) / 8192            # 496.03...
    causal_keys = 8193 / 2
    core = 8 * swa_keys * per_key + 1 * causal_keys * per_key + 7 * causal_keys * per_key
    forward = (32 * mlp + 9 * mamba + 9 * self_proj + 7 * cross_proj + 7 * gmu + core
               + 2 * 2560 * 200064)
    got = flops_per_token(official(), seq_len=T)
    assert got.forward == pytest.approx(forward, rel=1e-12)
    assert got.train == pytest.approx(3 * forward, rel=1e-12)
    # Sanity: about 6 x non-embedding-ish params + attention, ~2.48e10 per token.
    assert 2.4e10 < got.train < 2.6e10
    assert got.lm_head == 2 * 2560 * 200064
    assert got.mamba == 9 * mamba
    assert flops_per_token(official(), T, vocab_size=1000).lm_head == 2 * 2560 * 1000


def test_samba_yoco_counts_cross_attention_instead_of_gmu():
    sambay, yoco = flops_per_token(official(), 4096), flops_per_token(official(use_gmu=False), 4096)
    assert yoco.gmu == 0 and sambay.gmu > 0
    assert yoco.attention_proj - sambay.attention_proj == pytest.approx(7 * 4 * 2560 * 2560)
    transformer = flops_per_token(official(backbone="transformer"), 4096)
    assert transformer.mamba == 0 and transformer.gmu == 0


def test_window_bounds_swa_cost():
    assert mean_keys(4, 8) == pytest.approx(2.5)
    assert mean_keys(4, 2) == pytest.approx((1 + 2 + 2 + 2) / 4)
    short = flops_per_token(official(), seq_len=512).attention_core
    long = flops_per_token(official(), seq_len=4096).attention_core
    # The SWA part saturates at the window while the causal layers keep growing.
    assert long > short


def test_standard_attention_value_width():
    got = flops_per_token(official(use_diff_attn=False), seq_len=1).attention_core
    assert got == pytest.approx(16 * 1 * (2 * 40 * 64 + 2 * 40 * 64))


def test_mfu():
    assert mfu(1000.0, 3e9, 0.0, 1) == 0.0
    assert mfu(1000.0, 3e9, 1e13, 2) == pytest.approx(1000.0 * 3e9 / 2e13)
