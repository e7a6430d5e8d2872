"""Pretraining entry point.

    torchrun --nproc_per_node=N -m train.pretrain [--config-name RECIPE] [key=value ...]
    python -m train.pretrain --config-name demo            # one process, no torchrun

Recipes live in ``recipes/pretrain/`` (schema :class:`train.config.PretrainConfig`). Relaunching the same
command resumes from the run directory's latest checkpoint; a finished run (``DONE``) is left alone.

Exit codes: 0 = finished, or stopped by SIGTERM/SIGUSR1/SIGINT (Ctrl-C) after saving a checkpoint (no ``DONE``
then: relaunch to resume); 3 = non-finite loss (nothing saved after the last good checkpoint); 4 = another live
run holds run.dir (see train/runtime/run_lock.py); 1 = any other error (a relaunch with a changed config among
them, see ``run.allow_config_change``).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recipes.entry import hydra_main
from train.config import PretrainConfig, register_pretrain_schema
from train.engine.data_sources import check_sources, first_manifest, resolve_tokenizer_dir
from train.engine.launch import run_specs
from train.runtime.model_build import ModelBuilder, hf_config, resolve_vocab_size
from train.engine.trainer import TrainSpec
from train.runtime.run_name import fill_run_name


def model_builder(cfg: PretrainConfig, tokenizer: dict) -> ModelBuilder:
    """``model.init_from``'s export, else a fresh model of the recipe's architecture sized to ``tokenizer``
    (the first shard set's manifest entry)."""
    if cfg.model.init_from:
        return ModelBuilder.from_export(cfg.model.init_from, cfg.model.compute_backend)
    vocab = resolve_vocab_size(cfg.model, tokenizer["vocab_size"])
    config = hf_config(cfg.model, vocab_size=vocab, eos_token_id=tokenizer["eos_token_id"], mup=cfg.optim.mup)
    return ModelBuilder(config, seed=cfg.trainer.seed)


def build_spec(cfg: PretrainConfig, config_yaml: str, config_dict: dict) -> TrainSpec:
    """The run of a pretraining recipe, its data checked (a missing shard set is an error, dry run or not)."""
    manifest = first_manifest(cfg.data)
    tokenizer_dir = resolve_tokenizer_dir(cfg.data, manifest)
    builder = model_builder(cfg, manifest["tokenizer"])
    manifests = check_sources(cfg.data.sources, "data.sources", tokenizer_dir, builder.config.vocab_size)
    return TrainSpec(
        run_name=cfg.run.name, run_dir=Path(cfg.run.dir), wandb=cfg.wandb, optim=cfg.optim, deepspeed=cfg.deepspeed,
        trainer=cfg.trainer, data=cfg.data, model_cfg=cfg.model, build_model=builder, tokenizer_dir=tokenizer_dir,
        config_yaml=config_yaml, config_dict=config_dict, split_documents=True, data_manifests=manifests,
    )


def run(dcfg: DictConfig) -> int:
    """Run a pretraining recipe; returns the process exit code."""
    fill_run_name(dcfg, "pretrain", "model.init_from")
    cfg: PretrainConfig = OmegaConf.to_object(dcfg)
    spec = build_spec(cfg, OmegaConf.to_yaml(dcfg, resolve=True), OmegaConf.to_container(dcfg, resolve=True))
    return run_specs([spec], cfg.deepspeed, cfg.trainer.dry_run)


main = hydra_main("pretrain", register_pretrain_schema, run)


if __name__ == "__main__":
    main()
