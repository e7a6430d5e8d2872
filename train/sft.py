"""Multi-stage supervised fine-tuning entry point.

    torchrun --nproc_per_node=N -m train.sft [--config-name RECIPE] [key=value ...]
    python -m train.sft --config-name demo sft.init_from=runs/pretrain_demo/export sft.stages_to_run=[basic]

Each stage of ``sft.stages`` runs in ``run.dir/<stage>/`` with its own data mixture (``kind: sft`` shard sets),
sequence length, LR, schedule and length (steps or epochs), starting from the previous stage's ``export/``
(the first stage from ``sft.init_from``). A stage with ``DONE`` is skipped on relaunch; an interrupted one
resumes from its checkpoint. Exit codes are those of ``train.pretrain``.

Why the project's own trainer and not TRL's SFTTrainer: rows are packed with whole documents
(``split_documents=False``) and each token carries its document id, which the model uses for exact
isolation (Mamba/conv state resets and attention masks at every boundary). TRL's padding-free packing
signals boundaries only through ``position_ids``. The own loop also gives exact resume (loader position and
RNG states in the checkpoint) and the same ZeRO, metrics and export code as pretraining. Labels are
assistant-only: the shard sets' loss masks become ``IGNORE_INDEX`` labels in the loader.

``peft.enabled=true`` trains LoRA adapters on the frozen init model instead (``train.runtime.lora``): the export is
still the full model (adapters merged), and the adapter alone is saved in ``adapter/`` beside it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from data.sft_cache import ChatDataSpec, build_chat_cache, cache_dir, ensure_chat_cache
from data.sft_shards import check_overlong
from data.shards import MANIFEST, IncompatibleShardsError
from data.tokenizer import is_tokenizer_dir
from recipes.entry import hydra_main
from train.config import (DataConfig, DataSource, SFTConfig, SFTStageConfig, TrainerConfig, WandbConfig,
                          register_sft_schema)
from train.engine.data_sources import check_sources
from train.engine.launch import run_specs
from train.runtime.model_build import ModelBuilder, hf_config, require_export, resolve_vocab_size
from train.runtime.run_name import fill_run_name
from train.engine.trainer import TrainSpec


# The stage name of a run on sft.train_data (its W&B tag ``sft:finetune``).
FINETUNE_STAGE = "finetune"


class SFTDataError(ValueError):
    """An SFT stage's data does not fit the model it starts from."""


def stage_list(cfg: SFTConfig) -> list[SFTStageConfig]:
    """The stages to run, in recipe order; ``sft.stages_to_run`` names must exist."""
    names = [s.name for s in cfg.sft.stages]
    if len(set(names)) != len(names):
        raise ValueError(f"sft.stages has duplicate names: {names}")
    if not cfg.sft.stages:
        raise ValueError("sft.stages is empty and sft.train_data is not set: set sft.train_data=DATA (your chat "
                         "data, docs/finetune.md) or list stages in the recipe")
    wanted = cfg.sft.stages_to_run
    if wanted is None:
        return list(cfg.sft.stages)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(f"sft.stages_to_run={list(wanted)}: unknown stage(s) {unknown}; the recipe has {names}")
    return [s for s in cfg.sft.stages if s.name in wanted]


def init_dir_for(cfg: SFTConfig, stage: SFTStageConfig) -> Path:
    """``sft.init_from`` for the first stage, else the previous stage's export."""
    names = [s.name for s in cfg.sft.stages]
    i = names.index(stage.name)
    return Path(cfg.sft.init_from) if i == 0 else Path(cfg.run.dir) / names[i - 1] / "export"


def check_stage_data(stage: SFTStageConfig, data: DataConfig, tokenizer_dir: Path | None,
                     vocab_size: int | None) -> list[dict]:
    """Every source is an SFT shard set made with the init export's tokenizer (fingerprint) and vocabulary,
    and its conversations fit ``stage.overlong``."""
    where = f"sft.stages[{stage.name}].sources"
    try:
        manifests = check_sources(data.sources, where, tokenizer_dir, vocab_size, kind="sft")
    except IncompatibleShardsError as e:
        raise SFTDataError(f"{e}; an SFT stage trains on data tokenized with its init export's tokenizer") from None
    for i, m in enumerate(manifests):
        check_overlong(m["path"], "train", stage.seq_len, stage.overlong, f"{where}[{i}].path={m['path']}")
    return manifests


def stage_trainer(cfg: SFTConfig, stage: SFTStageConfig) -> TrainerConfig:
    """The trainer section of ``stage``: its own length, ``max_steps`` or else ``epochs``, capped by
    ``trainer.max_steps > 0`` (quick runs, tests); the trainer ends at whichever bound comes first."""
    if stage.max_steps <= 0 and stage.epochs <= 0:
        raise ValueError(f"sft stage {stage.name!r}: set max_steps > 0 or epochs > 0")
    cap = max(0, cfg.trainer.max_steps)
    if stage.max_steps > 0:
        return dataclasses.replace(cfg.trainer, max_steps=min(stage.max_steps, cap or stage.max_steps), epochs=0.0)
    return dataclasses.replace(cfg.trainer, max_steps=cap, epochs=stage.epochs)


def stand_in_model(cfg: SFTConfig, manifests: list[dict]) -> ModelBuilder:
    """A dry run before the init export exists: the recipe's model section stands in for its architecture."""
    vocab = resolve_vocab_size(cfg.model, manifests[0]["manifest"]["tokenizer"]["vocab_size"])
    return ModelBuilder(hf_config(cfg.model, vocab_size=vocab, eos_token_id=None), seed=cfg.trainer.seed)


def build_stage_spec(cfg: SFTConfig, stage: SFTStageConfig, config_yaml: str, config_dict: dict,
                     dry_run: bool) -> TrainSpec:
    """One stage of ``sft.stages``, in ``run.dir/<stage>``. Its data must exist; its init export may be missing
    only in a dry run (an earlier stage or pretraining makes it)."""
    init_dir = init_dir_for(cfg, stage)
    if not (init_dir / "config.json").is_file() and not dry_run:
        require_export(init_dir, f"the init export of sft stage {stage.name!r}",
                       "run the earlier stage or train.pretrain first, or set sft.init_from")
    wandb = copy.deepcopy(cfg.wandb)
    wandb.name = f"{wandb.name or cfg.run.name}-{stage.name}"
    return stage_spec(cfg, stage, init_dir, Path(cfg.run.dir) / stage.name, f"{cfg.run.name}/{stage.name}", wandb,
                      config_yaml + f"# stage: {stage.name}\n", {**config_dict, "stage": stage.name})


def stage_spec(cfg: SFTConfig, stage: SFTStageConfig, init_dir: Path, run_dir: Path, run_name: str,
               wandb: WandbConfig, config_yaml: str, config_dict: dict) -> TrainSpec:
    """The run of ``stage`` from ``init_dir`` in ``run_dir`` (``init_dir`` may lack its export only in a dry run:
    the recipe's model section then stands in)."""
    has_init = (init_dir / "config.json").is_file()
    data = cfg.data.for_stage(stage, str(init_dir))
    builder = ModelBuilder.from_export(init_dir, cfg.model.compute_backend) if has_init else None
    # An init without tokenizer files (a bare test export) has nothing to compare the data's tokenizer with.
    tokenizer = init_dir if has_init and is_tokenizer_dir(init_dir) else None
    manifests = check_stage_data(stage, data, tokenizer, builder.config.vocab_size if builder else None)
    builder = builder or stand_in_model(cfg, manifests)
    wandb = copy.deepcopy(wandb)
    wandb.tags = list(wandb.tags) + [f"sft:{stage.name}"]
    return TrainSpec(
        run_name=run_name, run_dir=run_dir, wandb=wandb, optim=cfg.optim.for_stage(stage),
        deepspeed=cfg.deepspeed, trainer=stage_trainer(cfg, stage), data=data, model_cfg=cfg.model,
        build_model=builder, tokenizer_dir=init_dir, config_yaml=config_yaml, config_dict=config_dict,
        split_documents=False, data_manifests=manifests, peft=cfg.peft,
    )


def _paths(value) -> list[str] | None:
    """A data setting (one path or a list of them) as a list of strings; None stays None."""
    if value is None:
        return None
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


def chat_data_spec(cfg: SFTConfig) -> ChatDataSpec:
    """What the data cache of a run on ``sft.train_data`` depends on (``data.sft_cache``)."""
    s = cfg.sft
    return ChatDataSpec(train=_paths(s.train_data), held_out=_paths(s.eval_data), eval_fraction=s.eval_fraction,
                        seq_len=s.seq_len, seed=cfg.trainer.seed)


def finetune_data(cfg: SFTConfig, init_dir: Path, dry_run: bool, scratch: contextlib.ExitStack) -> Path:
    """The tokenized ``sft.train_data``: the cache under ``run.dir/data/`` (reused, or built now); a dry run that
    finds none builds it in a temporary directory that ``scratch`` removes, so it writes nothing in the run."""
    spec = chat_data_spec(cfg)
    cache_root = Path(cfg.run.dir) / "data"
    if not dry_run:
        return ensure_chat_cache(spec, init_dir, cache_root)
    cached = cache_dir(spec, init_dir, cache_root)
    if (cached / MANIFEST).is_file():
        return cached
    return build_chat_cache(spec, init_dir, Path(scratch.enter_context(tempfile.TemporaryDirectory())) / cached.name)


def build_finetune_spec(cfg: SFTConfig, config_yaml: str, config_dict: dict, dry_run: bool,
                        scratch: contextlib.ExitStack) -> TrainSpec:
    """The one stage of a run on ``sft.train_data``, from ``sft.init_from`` (a hub snapshot or an export), in
    ``run.dir`` itself (so its export is ``run.dir/export``)."""
    init_dir = require_export(cfg.sft.init_from, "sft.init_from",
                              "point it at a downloaded hub snapshot or a run's export/ directory")
    s = cfg.sft
    stage = SFTStageConfig(name=FINETUNE_STAGE, sources=[DataSource(path=str(finetune_data(cfg, init_dir, dry_run,
                                                                                           scratch)))],
                           seq_len=s.seq_len, lr=s.lr, epochs=s.epochs)
    return stage_spec(cfg, stage, init_dir, Path(cfg.run.dir), cfg.run.name, cfg.wandb, config_yaml, config_dict)


def run(dcfg: DictConfig) -> int:
    """Run the stages of an SFT recipe in order, or the one stage on ``sft.train_data``; returns the exit code."""
    fill_run_name(dcfg, "sft", "sft.init_from")
    cfg: SFTConfig = OmegaConf.to_object(dcfg)
    config_yaml = OmegaConf.to_yaml(dcfg, resolve=True)
    config_dict = OmegaConf.to_container(dcfg, resolve=True)
    dry_run = cfg.trainer.dry_run
    with contextlib.ExitStack() as scratch:
        if cfg.sft.train_data is not None:
            # A generator too: the cache is built after the process group is up, so every rank can wait its turn.
            specs = (build_finetune_spec(cfg, config_yaml, config_dict, dry_run, scratch) for _ in range(1))
        else:
            # A generator: stage k+1 is built (and reads stage k's export) only once stage k has run.
            specs = (build_stage_spec(cfg, s, config_yaml, config_dict, dry_run) for s in stage_list(cfg))
        return run_specs(specs, cfg.deepspeed, dry_run)


main = hydra_main("sft", register_sft_schema, run)


if __name__ == "__main__":
    main()
