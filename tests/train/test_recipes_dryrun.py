"""Dry-run every pretrain and SFT recipe on CPU: config, model (large ones on the meta device), optimizer
groups, data checks when the data exists, FLOPs estimate; no step is run."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from train.config import register_configs

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ALL = [(e, p.stem) for e in ("pretrain", "sft") for p in sorted((RECIPES / e).glob("*.yaml"))]


@pytest.mark.parametrize("entry,name", ALL)
def test_dry_run(entry, name, tmp_path, capsys, monkeypatch):
    register_configs()
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # recipes name data paths relative to the checkout
    overrides = [f"run.dir={tmp_path / 'run'}", "trainer.dry_run=true"]
    with initialize_config_dir(config_dir=str(RECIPES / entry), version_base=None):
        cfg = compose(config_name=name, overrides=overrides)
    if OmegaConf.select(cfg, "model.vocab_size") is None:
        cfg.model.vocab_size = 4096  # the demo tokenizer's size, for checkouts without artifacts/data
    if entry == "pretrain":
        from train.pretrain import run
    else:
        from train.sft import run
    assert run(cfg) == 0
    out = capsys.readouterr().out
    assert '"dry_run"' in out and "train_flops_per_token" in out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
