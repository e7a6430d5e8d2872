"""Multi-stage SFT: stage selection and init chain, data/tokenizer checks, per-stage settings.

The two-stage run (chaining through exports, skip-on-DONE) is in test_sft_stages_e2e.py."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from train.config import register_sft_schema
from tests.train.builders import base_overrides, make_sft_shards, make_tokenizer

REPO = Path(__file__).resolve().parents[2]


def compose_sft(overrides):
    register_sft_schema()
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "sft"), version_base=None):
        return OmegaConf.to_object(compose(config_name="demo", overrides=overrides))


def test_stage_selection_and_init_chain(sft_setup, tmp_path):
    from train.sft import init_dir_for, stage_list

    cfg = compose_sft(base_overrides(sft_setup, tmp_path / "r") + ["sft.stages_to_run=[two]"])
    stages = stage_list(cfg)
    assert [s.name for s in stages] == ["two"]
    assert init_dir_for(cfg, stages[0]) == tmp_path / "r" / "one" / "export"
    assert init_dir_for(cfg, cfg.sft.stages[0]) == sft_setup["init"]
    cfg = compose_sft(base_overrides(sft_setup, tmp_path / "r") + ["sft.stages_to_run=[three]"])
    with pytest.raises(ValueError, match="three"):
        stage_list(cfg)


def test_refuses_tokenizer_mismatch_and_non_sft_shards(sft_setup, tmp_path):
    from train.sft import SFTDataError, build_stage_spec

    other = tmp_path / "other"
    info = make_tokenizer(other, 99)
    foreign = make_sft_shards(other / "sft", info)
    cfg = compose_sft(base_overrides(sft_setup, tmp_path / "r"))
    cfg.sft.stages[0].sources[0].path = str(foreign)
    with pytest.raises(SFTDataError, match="tokenize|tokenizer"):
        build_stage_spec(cfg, cfg.sft.stages[0], "", {}, dry_run=False)
    cfg.sft.stages[0].sources[0].path = str(sft_setup["pre"])
    with pytest.raises(SFTDataError, match="kind"):
        build_stage_spec(cfg, cfg.sft.stages[0], "", {}, dry_run=False)
    cfg.sft.init_from = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a model export"):
        build_stage_spec(cfg, cfg.sft.stages[0], "", {}, dry_run=False)


def test_stage_spec_uses_stage_settings(sft_setup, tmp_path):
    from train.sft import build_stage_spec

    cfg = compose_sft(base_overrides(sft_setup, tmp_path / "r") + ["trainer.max_steps=2"])
    spec = build_stage_spec(cfg, cfg.sft.stages[1], "", {}, dry_run=True)
    assert spec.split_documents is False
    assert spec.data.seq_len == 48 and spec.optim.lr == 5.0e-4
    assert spec.trainer.max_steps == 2 and spec.trainer.epochs == 0  # trainer.max_steps caps the stage's 3
    assert spec.run_dir == tmp_path / "r" / "two"


