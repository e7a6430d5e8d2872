"""Multi-stage SFT: stage chaining through exports, skip-on-DONE, stage selection, data/tokenizer checks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from train.config import register_configs

REPO = Path(__file__).resolve().parents[2]


def make_tokenizer(root: Path, seed: int) -> dict:
    from data.shards import tokenizer_info
    from data.tokenizer import train_bpe_tokenizer

    # Digits are single tokens in our BPE, so the seed must change the words for two tokenizers to differ.
    word = "".join(chr(97 + (seed * 7 + k) % 26) for k in range(6))
    train_bpe_tokenizer([f"sft corpus {word} line {i} {i * 5}" for i in range(100)], 300, root / "tokenizer")
    return tokenizer_info(root / "tokenizer")


def make_sft_shards(out: Path, info: dict, kind: str = "sft", seed: int = 0) -> Path:
    from data.shards import ShardSetWriter

    rng = np.random.default_rng(seed)
    with ShardSetWriter(out, kind, info, ["random"]) as w:
        for _ in range(60):
            n = int(rng.integers(8, 40))
            tokens = rng.integers(1, info["vocab_size"], size=n)
            if kind == "sft":
                mask = np.zeros(n, dtype=np.uint8)
                mask[n // 2:] = 1  # the "assistant" half
                w.add("train", tokens, mask)
            else:
                w.add("train", tokens)
    return out


def make_init_export(root: Path) -> Path:
    """A freshly initialised tiny model exported like train.pretrain does (the stage-1 starting point)."""
    from train.config import ModelConfig
    from train.export import save_export
    from train.model_build import build_fresh, hf_config

    mc = ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4,
                     num_key_value_heads=2, sliding_window=8, vocab_size=320)
    model = build_fresh(hf_config(mc, vocab_size=320, eos_token_id=0), "cpu", seed=0)
    save_export(model, root / "tokenizer", root / "init")
    return root / "init"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    info = make_tokenizer(root, 0)
    return {"root": root, "a": make_sft_shards(root / "sft_a", info, seed=1),
            "b": make_sft_shards(root / "sft_b", info, seed=2), "pre": make_sft_shards(root / "pre", info, "pretrain"),
            "init": make_init_export(root)}


def stages_override(a, b):
    return ("sft.stages=[{name:one,sources:[{path:%s,weight:1.0}],seq_len:32,lr:1.0e-3,max_steps:2},"
            "{name:two,sources:[{path:%s,weight:1.0}],seq_len:48,lr:5.0e-4,max_steps:3}]" % (a, b))


def base_overrides(setup, run_dir):
    return [f"run.dir={run_dir}", f"sft.init_from={setup['init']}", stages_override(setup["a"], setup["b"]),
            "data.global_batch_tokens=192", "data.micro_batch_rows=2", "trainer.log_every=1",
            "trainer.progress_bar=false", "trainer.save_every=100"]


def compose_sft(overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "sft"), version_base=None):
        return OmegaConf.to_object(compose(config_name="demo", overrides=overrides))


def test_stage_selection_and_init_chain(setup, tmp_path):
    from train.sft import init_dir_for, stage_list

    cfg = compose_sft(base_overrides(setup, tmp_path / "r") + ["sft.stages_to_run=[two]"])
    stages = stage_list(cfg)
    assert [s.name for s in stages] == ["two"]
    assert init_dir_for(cfg, stages[0]) == tmp_path / "r" / "one" / "export"
    assert init_dir_for(cfg, cfg.sft.stages[0]) == setup["init"]
    cfg = compose_sft(base_overrides(setup, tmp_path / "r") + ["sft.stages_to_run=[three]"])
    with pytest.raises(ValueError, match="three"):
        stage_list(cfg)


def test_refuses_tokenizer_mismatch_and_non_sft_shards(setup, tmp_path):
    from train.sft import SFTDataError, build_stage_spec

    other = tmp_path / "other"
    info = make_tokenizer(other, 99)
    foreign = make_sft_shards(other / "sft", info)
    cfg = compose_sft(base_overrides(setup, tmp_path / "r"))
    cfg.sft.stages[0].sources[0].path = str(foreign)
    with pytest.raises(SFTDataError, match="tokenize|tokenizer"):
        build_stage_spec(cfg, cfg.sft.stages[0], "", {}, dry_run=False)
    cfg.sft.stages[0].sources[0].path = str(setup["pre"])
    with pytest.raises(SFTDataError, match="kind"):
        build_stage_spec(cfg, cfg.sft.stages[0], "", {}, dry_run=False)
    cfg.sft.init_from = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a model export"):
        build_stage_spec(cfg, cfg.sft.stages[0], "", {}, dry_run=False)


def test_stage_spec_uses_stage_settings(setup, tmp_path):
    from train.sft import build_stage_spec

    cfg = compose_sft(base_overrides(setup, tmp_path / "r") + ["trainer.max_steps=2"])
    spec = build_stage_spec(cfg, cfg.sft.stages[1], "", {}, dry_run=True)
    assert spec.split_documents is False
    assert spec.data.seq_len == 48 and spec.optim.lr == 5.0e-4
    assert spec.trainer.max_steps == 2 and spec.trainer.epochs == 0  # trainer.max_steps caps the stage's 3
    assert spec.run_dir == tmp_path / "r" / "two"


def run_sft(overrides):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "train.sft", *overrides], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-5000:]
    return p


@pytest.mark.slow
def test_two_stages_chain_and_skip_when_done(setup, tmp_path):
    rd = tmp_path / "run"
    run_sft(base_overrides(setup, rd))
    for name, steps in (("one", 2), ("two", 3)):
        assert (rd / name / "DONE").exists()
        rows = [json.loads(x) for x in (rd / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, steps + 1))
        assert all(np.isfinite(r["loss"]) for r in rows)
        assert (rd / name / "export" / "model.safetensors").exists()
    from data.tokenizer import fingerprint

    assert fingerprint(rd / "two" / "export") == fingerprint(setup["root"] / "tokenizer")
    p = run_sft(base_overrides(setup, rd))
    assert p.stdout.count("nothing to do") == 2
