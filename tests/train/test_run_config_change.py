"""A relaunch into a run directory with a config other than the saved one is refused, listing the keys that differ
(old -> new), for pretraining, SFT stages and DPO, finished or not; ``run.allow_config_change=true`` lets it through,
and the keys that do not change the training (train.runtime.run_dir.FREE_KEYS) may change freely."""
import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.train.builders import run
from train.runtime.distributed import DistInfo
from train.runtime.run_dir import ConfigChangedError, RunDir, config_changes

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_changes_are_listed_by_key_old_to_new():
    old = "run: {name: a, dir: x}\ntrainer: {max_steps: 2, log_every: 1}\ndata: {sources: [{path: p, weight: 1.0}]}\n"
    new = ("run: {name: b, dir: /abs/x, allow_config_change: true}\ntrainer: {max_steps: 3, log_every: 5}\n"
           "data: {sources: [{path: q, weight: 1.0}], seq_len: 64}\nwandb: {mode: disabled}\n")
    assert config_changes(old, new) == ["data.seq_len: <absent> -> 64", "data.sources[0].path: 'p' -> 'q'",
                                        "trainer.max_steps: 2 -> 3"]
    assert config_changes(old, old + "# stage: one\n") == []


def test_check_relaunch_refuses_unless_allowed(tmp_path, capsys):
    rd = RunDir(tmp_path / "run")
    rd.check_relaunch("trainer: {max_steps: 2}\n")  # a fresh directory
    rd.create()
    rd.write_config("trainer: {max_steps: 2}\n")
    rd.check_relaunch("trainer: {max_steps: 2}\n")
    with pytest.raises(ConfigChangedError, match=r"was started with another config.*\n  trainer.max_steps: 2 -> 3\n"
                                                 r".*run.allow_config_change=true"):
        rd.check_relaunch("trainer: {max_steps: 3}\n")
    rd.check_relaunch("run: {allow_config_change: true}\ntrainer: {max_steps: 3}\n")
    assert "trainer.max_steps: 2 -> 3" in capsys.readouterr().out
    rd.mark_done({})
    with pytest.raises(ConfigChangedError, match=r"is complete \(DONE exists\)"):
        rd.check_relaunch("trainer: {max_steps: 3}\n")


def _pretrain_spec(shards: Path, run_dir: Path, **trainer):
    from train.config import DataSource, PretrainConfig
    from train.pretrain import build_spec

    cfg = PretrainConfig()
    cfg.run.name, cfg.run.dir = "t", str(run_dir)
    cfg.model.hidden_size, cfg.model.intermediate_size, cfg.model.num_hidden_layers = 32, 64, 8
    cfg.model.num_attention_heads, cfg.model.num_key_value_heads, cfg.model.sliding_window = 4, 2, 8
    cfg.data.sources = [DataSource(path=str(shards))]
    cfg.trainer = dataclasses.replace(cfg.trainer, **trainer)
    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    return build_spec(cfg, text, OmegaConf.to_container(OmegaConf.structured(cfg)))


def _finished(run_dir: Path, spec) -> None:
    rd = RunDir(run_dir)
    rd.create()
    rd.write_config(spec.config_yaml)
    rd.mark_done({"step": 2})


def test_pretrain_relaunch_into_a_finished_run_with_another_config_is_refused(pretrain_shards, tmp_path):
    from train.engine.trainer import StopReason, Trainer

    rd = tmp_path / "run"
    _finished(rd, _pretrain_spec(pretrain_shards, rd, max_steps=2))
    with pytest.raises(ConfigChangedError, match=r"trainer.max_steps: 2 -> 3"):
        Trainer(_pretrain_spec(pretrain_shards, rd, max_steps=3), CPU).run()
    free = _pretrain_spec(pretrain_shards, rd, max_steps=2, log_every=7, progress_bar=False, save_every=1)
    assert Trainer(free, CPU).run() is StopReason.already_done


def test_sft_stage_relaunch_with_another_config_is_refused(sft_setup, tmp_path):
    from train.config import DataSource, SFTConfig, SFTStageConfig
    from train.engine.trainer import StopReason, Trainer
    from train.sft import build_stage_spec

    def spec(lr):
        cfg = SFTConfig()
        cfg.run.name, cfg.run.dir, cfg.sft.init_from = "s", str(tmp_path / "run"), str(sft_setup["init"])
        cfg.sft.stages = [SFTStageConfig(name="one", sources=[DataSource(path=str(sft_setup["a"]))], seq_len=32,
                                         lr=lr, max_steps=2)]
        cfg.data.global_batch_tokens, cfg.data.micro_batch_rows = 128, 2
        structured = OmegaConf.structured(cfg)
        return build_stage_spec(cfg, cfg.sft.stages[0], OmegaConf.to_yaml(structured),
                                OmegaConf.to_container(structured), False)

    done = spec(1e-3)
    _finished(done.run_dir, done)
    with pytest.raises(ConfigChangedError, match=r"sft.stages\[0\].lr: 0.001 -> 0.002"):
        Trainer(spec(2e-3), CPU).run()
    assert Trainer(spec(1e-3), CPU).run() is StopReason.already_done


def test_dpo_relaunch_with_another_config_is_refused_before_reading_inputs(tmp_path, capsys):
    from train.alignment.dpo_config import DPORunConfig
    from train.dpo import run as run_dpo

    def cfg_and_yaml(beta, allow=False):
        cfg = DPORunConfig()
        cfg.run.name, cfg.run.dir, cfg.run.allow_config_change = "d", str(tmp_path / "run"), allow
        cfg.dpo.init_from = str(tmp_path / "no_such_export")  # never read: the check comes first
        cfg.dpo.beta = beta
        return cfg, OmegaConf.to_yaml(OmegaConf.structured(cfg))

    cfg, text = cfg_and_yaml(0.1)
    rd = RunDir(tmp_path / "run")
    rd.create()
    rd.write_config(text)
    rd.mark_done({})
    assert run_dpo(cfg, text) is None  # the same config: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(ConfigChangedError, match=r"dpo.beta: 0.1 -> 0.2"):
        run_dpo(*cfg_and_yaml(0.2))
    assert run_dpo(*cfg_and_yaml(0.2, allow=True)) is None
    assert "accepting a changed config" in capsys.readouterr().out


def test_cli_relaunch_lists_the_change_and_the_override_resumes(pretrain_shards, tmp_path):
    """Through ``python -m train.pretrain``: an unfinished run (stopped after step 1) relaunched with another length
    is refused with exit status 1 and the key; with ``run.allow_config_change=true`` it resumes to the new end."""
    rd = tmp_path / "run"
    base = ["trainer.log_every=1", "trainer.export=false", "data.global_batch_tokens=128"]
    run(rd, pretrain_shards, [*base, "trainer.max_steps=1"])
    (rd / "DONE").unlink()  # as if stopped after its step-1 checkpoint
    p = run(rd, pretrain_shards, [*base, "trainer.max_steps=2"], check=False)
    assert p.returncode == 1 and "trainer.max_steps: 1 -> 2" in p.stderr, p.stderr[-3000:]
    assert not (rd / "DONE").exists()
    p = run(rd, pretrain_shards, [*base, "trainer.max_steps=2", "run.allow_config_change=true"])
    assert "resumed" in p.stdout and (rd / "DONE").exists()
    assert (rd / "config.prev-1.yaml").is_file()
