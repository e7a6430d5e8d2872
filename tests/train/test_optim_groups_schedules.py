"""AdamW parameter groups, muP++ multipliers, LR schedules and the skippable step."""
import math

import pytest
import torch

from train.config import ModelConfig, OptimConfig, ScheduleConfig
from train.runtime.model_build import build_fresh, hf_config
from train.engine.optim import SkippableAdamW, build_optimizer, group_summary, mup_reinit_hidden, param_groups
from train.engine.schedule import build_scheduler, lr_multiplier


def tiny_model_cfg():
    return ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                       num_attention_heads=4, num_key_value_heads=2, sliding_window=8)


@pytest.fixture(scope="module")
def tiny():
    mc = tiny_model_cfg()
    return mc, build_fresh(hf_config(mc, vocab_size=64, eos_token_id=0), "cpu", seed=0)


def test_no_decay_on_vector_like_parameters(tiny):
    _, model = tiny
    groups = group_summary(model)
    no_decay, decay = groups["no_decay"], groups["decay"]
    for fragment in ("A_log", ".D", "dt_proj.bias", "lambda_q1", "lambda_k2", "conv1d.weight", "conv1d.bias",
                     "embed_tokens", "layernorm", "subln", "Wqkv.bias", "out_proj.bias"):
        assert any(fragment in n for n in no_decay), fragment
        assert not any(fragment in n for n in decay), fragment
    for fragment in ("fc1.weight", "fc2.weight", "in_proj.weight", "x_proj.weight", "dt_proj.weight",
                     "Wqkv.weight"):
        assert any(fragment in n for n in decay), fragment
    names = set(no_decay) | set(decay)
    assert len(names) == len(no_decay) + len(decay) == len(list(model.named_parameters()))


def test_standard_groups_share_lr(tiny):
    mc, model = tiny
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1)
    groups = {g["name"]: g for g in param_groups(model, mc, cfg, 8192)}
    assert groups["decay"]["lr"] == groups["no_decay"]["lr"] == 1e-3
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0


def test_mup_lr_rules(tiny):
    mc, model = tiny
    cfg = OptimConfig(lr=4e-4)
    cfg.mup.enabled = True
    cfg.mup.base_depth = 16
    cfg.mup.base_batch_tokens = 2**21
    groups = {g["name"]: g for g in param_groups(model, mc, cfg, 2**19)}
    eta = 4e-4 * math.sqrt(2**19 / 2**21) * math.sqrt(16 / 8)
    assert groups["no_decay"]["lr"] == pytest.approx(eta, rel=1e-12)
    assert groups["decay"]["lr"] == pytest.approx(eta * 16 / 8, rel=1e-12)


def test_mup_reinit_uniform_bounds():
    mc = tiny_model_cfg()
    model = build_fresh(hf_config(mc, vocab_size=64, eos_token_id=0), "cpu", seed=0)
    emb_before = model.model.embed_tokens.weight.clone()
    n = mup_reinit_hidden(model, torch.Generator().manual_seed(0))
    assert n > 0
    fc1 = model.model.layers[0].mlp.fc1.weight
    assert fc1.abs().max() <= 1 / math.sqrt(fc1.shape[1]) + 1e-7
    assert fc1.abs().max() > 0.5 / math.sqrt(fc1.shape[1])
    assert torch.equal(model.model.embed_tokens.weight, emb_before)


def mult(name, step, total=100, warmup=10, min_ratio=0.0, decay_fraction=0.2):
    return lr_multiplier(step, name=name, total_steps=total, warmup=warmup, min_ratio=min_ratio,
                         decay_fraction=decay_fraction)


def test_schedule_values_by_hand():
    assert mult("cosine", 0) == pytest.approx(0.1)
    assert mult("cosine", 9) == pytest.approx(1.0)
    # step 54: progress (54-10+1)/90 = 0.5 -> cosine at half = 0.5
    assert mult("cosine", 54) == pytest.approx(0.5)
    assert mult("cosine", 99) == pytest.approx(0.0, abs=1e-12)
    assert mult("cosine", 54, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert mult("linear", 54) == pytest.approx(0.5)
    assert mult("linear", 99, min_ratio=0.2) == pytest.approx(0.2)
    # wsd: 90 post-warmup steps, 18 decaying (steps 82..99); stable before.
    assert mult("wsd", 81) == 1.0
    assert mult("wsd", 82) == pytest.approx(1 - 1 / 18)
    assert mult("wsd", 99) == pytest.approx(0.0, abs=1e-12)
    assert mult("linear", 150) == 0.0


def test_scheduler_drives_group_lrs_and_validates():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    q = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p], "lr": 2.0}, {"params": [q], "lr": 1.0}])
    sched = build_scheduler(opt, ScheduleConfig(name="linear", warmup_steps=2), total_steps=4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.0, 0.5])
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.0, 1.0])
    with pytest.raises(ValueError, match="optim.schedule.name"):
        build_scheduler(opt, ScheduleConfig(name="cosin"), 10)
    with pytest.raises(ValueError, match="warmup"):
        build_scheduler(opt, ScheduleConfig(warmup_steps=20), 10)


def test_skippable_adamw_leaves_params_and_state():
    p = torch.nn.Parameter(torch.ones(3))
    opt = SkippableAdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    after_one = p.detach().clone()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    p.grad = torch.full((3,), float("nan"))
    opt.skip = True
    opt.step()
    opt.step()  # ZeRO steps each parameter group separately: the flag holds until the trainer clears it
    assert torch.equal(p.detach(), after_one)
    assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())
    opt.skip = False
    p.grad = torch.ones(3)
    opt.step()
    assert not torch.equal(p.detach(), after_one)


def test_build_optimizer_rejects_bad_betas(tiny):
    mc, model = tiny
    with pytest.raises(ValueError, match="optim.betas"):
        build_optimizer(model, mc, OptimConfig(betas=[0.9]), 8192)
