"""bench/bench_model.py: the byte counts behind its floor and its cache budget agree with what the cache holds, and
a tiny run writes every section (batch-1 decode against the floor, the ratios with their goals, the budget regime)
with sequence counts that fit the budget."""
import argparse
import json
import math

import pytest
import torch

from bench import bench_model
from sambay_model import LayerRole, Phi4FlashForCausalLM

# 8 layers: the fewest with a cross-attention layer re-reading the shared K,V (L/4 - 1 of them).
TINY = dict(hidden=32, intermediate=64, layers=8, heads=4, kv_heads=2, window=64, vocab=128)
TINY_ARGV = ["--hidden", "32", "--intermediate", "64", "--layers", "8", "--heads", "4", "--kv-heads", "2",
             "--window", "64", "--vocab", "128"]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _model(name: str) -> Phi4FlashForCausalLM:
    torch.manual_seed(0)
    return Phi4FlashForCausalLM(bench_model.bench_config(bench_model.MODELS[name], argparse.Namespace(**TINY))).eval()


@pytest.mark.parametrize("name", ["sambay", "sambay_da", "transformer++"])
def test_byte_counts_match_the_filled_cache(name):
    model = _model(name)
    cfg, context, batch = model.config, 200, 3
    cache, token = bench_model.filled_cache(model, context, batch=batch)
    assert token.shape == (batch, 1) and cache.get_seq_length() == context
    # The budget's per-sequence figure is what a batched cache holds per sequence.
    assert cache.nbytes() == batch * bench_model.theory_cache_bytes(cfg, context)
    roles = [cfg.layer_role(i) for i in range(cfg.num_hidden_layers)]
    for i, r in enumerate(roles):
        if r == LayerRole.SWA:  # a window layer keeps its window, however the random K,V were appended
            assert cache.key_cache[i].shape[2] == cfg.sliding_window[i] < context
    # Read per step, per sequence: every state once, plus the shared K,V again in each cross-attention layer.
    full = sum(cache.key_cache[i][:1].nbytes + cache.value_cache[i][:1].nbytes for i, r in enumerate(roles)
               if r == LayerRole.FULL_ATTN)
    shared_rereads = roles.count(LayerRole.CROSS_ATTN) * full
    per_sequence = cache.nbytes() // batch + shared_rereads
    params = bench_model.n_params(model)
    assert bench_model.bytes_read_per_step(cfg, params, context) == 4 * params + per_sequence
    assert bench_model.bytes_read_per_step(cfg, 0, context) == per_sequence
    assert (name == "transformer++") == (shared_rereads == 0)


def test_goals_apply_where_stated():
    assert bench_model.goal_of("decode_over_bytes_ratio_16384") == ("<=", 1.15)
    assert bench_model.goal_of("decode_over_bytes_ratio_32768") == ("<=", 1.15)
    assert bench_model.goal_of("decode_over_bytes_ratio_1024") is None
    assert bench_model.goal_of("decode_vs_transformer_16384") is None
    assert bench_model.goal_of("prefill_16k_over_1k") == ("<=", 20.0)
    assert bench_model._met(1.2, ("<=", 1.15)) == "no" and bench_model._met(5.0, (">=", 5.0)) == "yes"


def test_tiny_run_writes_every_section(tmp_path, restore_threads):
    budget_gib, budget_context, steps = 0.0002, 160, 2
    argv = [*TINY_ARGV, "--contexts", "96", "160", "--prefill-contexts", "96", "160", "--decode-steps", "2",
            "--copy-mib", "1", "--budget-gib", str(budget_gib), "--budget-context", str(budget_context),
            "--budget-steps", str(steps), "--out", str(tmp_path / "model")]
    assert bench_model.main(argv) == 0
    report = json.loads((tmp_path / "model.json").read_text())
    for row in report["results"].values():
        for r in row.values():
            assert 0 < r["floor_ms"] < r["decode_ms"] and r["cache_bytes"] == r["cache_bytes_theory"]
    for variant, r in report["ratios"].items():
        for c in ("96", "160"):
            assert r[f"decode_over_bytes_ratio_{c}"] == pytest.approx(
                r[f"decode_vs_transformer_{c}"] / r[f"bytes_read_vs_transformer_{c}"])
    budget = report["budget"]
    for name, r in budget.items():
        assert r["batch"] == math.floor(budget_gib * 2**30 / r["cache_bytes_per_sequence"]) >= 1
        assert r["cache_bytes"] == r["batch"] * r["cache_bytes_per_sequence"] <= budget_gib * 2**30
        assert r["tokens_per_s"] == pytest.approx(r["batch"] / (r["step_ms"] / 1e3))
    assert budget["sambay"]["batch"] > budget["transformer++"]["batch"]
    for variant, ratio in report["budget_ratios"].items():
        assert ratio == pytest.approx(budget[variant]["tokens_per_s"] / budget["transformer++"]["tokens_per_s"])
    text = (tmp_path / "model.md").read_text()
    for heading in ("## Batch 1: decode against its fewest-bytes floor", "| decode_over_bytes_ratio_160 |",
                    "## Decode throughput in a 0.0002 GiB cache budget at 160 context", "goal >= 5.0",
                    "What these figures cannot tell"):
        assert heading in text
