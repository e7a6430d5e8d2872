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
assistant-only: the shard sets' loss masks become ``-100`` labels in the loader.
"""
from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from train.config import DataConfig, SFTConfig, SFTStageConfig, register_configs


class SFTDataError(ValueError):
    """An SFT stage's data does not fit the model it starts from."""


def stage_list(cfg: SFTConfig) -> list[SFTStageConfig]:
    """The stages to run, in recipe order; ``sft.stages_to_run`` names must exist."""
    names = [s.name for s in cfg.sft.stages]
    if len(set(names)) != len(names):
        raise ValueError(f"sft.stages has duplicate names: {names}")
    if not cfg.sft.stages:
        raise ValueError("sft.stages is empty: the recipe must list at least one stage")
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


def stage_data(cfg: SFTConfig, stage: SFTStageConfig, init_dir: Path) -> DataConfig:
    data = copy.deepcopy(cfg.data)
    data.sources = list(stage.sources)
    data.seq_len = stage.seq_len
    data.tokenizer = str(init_dir)
    if stage.global_batch_tokens is not None:
        data.global_batch_tokens = stage.global_batch_tokens
    if stage.micro_batch_rows is not None:
        data.micro_batch_rows = stage.micro_batch_rows
    return data


def check_stage_data(stage: SFTStageConfig, data: DataConfig, init_dir: Path, vocab_size: int | None,
                     required: bool) -> list[dict]:
    """Every source is an SFT shard set made with the init export's tokenizer (fingerprint) and vocabulary."""
    from data.sft_shards import check_overlong
    from data.shards import IncompatibleShardsError, check_compatible

    out = []
    for i, src in enumerate(data.sources):
        path = Path(src.path)
        where = f"sft.stages[{stage.name}].sources[{i}].path={src.path}"
        if not (path / "manifest.json").is_file():
            if required:
                raise FileNotFoundError(f"{where}: no shard set there (no manifest.json); run `python -m data.prepare`")
            continue
        tokenizer = init_dir if (init_dir / "tokenizer.json").is_file() else None
        try:
            manifest = check_compatible(path, tokenizer, vocab_size)
        except IncompatibleShardsError as e:
            raise SFTDataError(f"{where} does not match the init checkpoint {init_dir}: {e}") from None
        if manifest["kind"] != "sft":
            raise SFTDataError(f"{where}: shard set kind is {manifest['kind']!r}; SFT needs kind 'sft' (loss masks)")
        check_overlong(path, "train", stage.seq_len, stage.overlong, where)
        out.append({"path": str(path), "weight": src.weight, "manifest": manifest})
    return out


def stage_steps(cfg: SFTConfig, stage: SFTStageConfig) -> tuple[int, float]:
    """(max_steps, epochs) for the trainer; ``trainer.max_steps > 0`` caps every stage (quick runs, tests)."""
    if stage.max_steps <= 0 and stage.epochs <= 0:
        raise ValueError(f"sft stage {stage.name!r}: set max_steps > 0 or epochs > 0")
    return stage.max_steps, stage.epochs


def build_stage_spec(cfg: SFTConfig, stage: SFTStageConfig, config_yaml: str, config_dict: dict, dry_run: bool):
    from train.model_build import build_fresh, hf_config, load_export, resolve_vocab_size
    from train.trainer import TrainSpec

    init_dir = init_dir_for(cfg, stage)
    has_init = (init_dir / "config.json").is_file()
    if not has_init and not dry_run:
        raise FileNotFoundError(
            f"sft stage {stage.name!r} starts from {init_dir}, which is not a model export (no config.json); "
            f"run the earlier stage or train.pretrain first, or set sft.init_from")
    vocab = None
    if has_init:
        vocab = int(json.loads((init_dir / "config.json").read_text())["vocab_size"])
    data = stage_data(cfg, stage, init_dir)
    manifests = check_stage_data(stage, data, init_dir, vocab, required=not dry_run)

    if has_init:
        def build_model(device):
            if str(device) == "meta":
                import torch
                from transformers import AutoConfig

                import sambay_model  # noqa: F401
                from sambay_model import Phi4FlashForCausalLM

                with torch.device("meta"):
                    return Phi4FlashForCausalLM(AutoConfig.from_pretrained(str(init_dir)))
            return load_export(init_dir, cfg.model.compute_backend).to(device)
    else:  # dry run without the init export: the recipe's model section stands in for its architecture
        tok_vocab = manifests[0]["manifest"]["tokenizer"]["vocab_size"] if manifests else None
        config = hf_config(cfg.model, vocab_size=resolve_vocab_size(cfg.model, tok_vocab), eos_token_id=None)

        def build_model(device):
            return build_fresh(config, device, cfg.trainer.seed)

    optim = copy.deepcopy(cfg.optim)
    optim.lr = stage.lr
    optim.schedule = copy.deepcopy(stage.schedule)
    max_steps, epochs = stage_steps(cfg, stage)
    if cfg.trainer.max_steps > 0:
        if max_steps > 0:
            max_steps = min(max_steps, cfg.trainer.max_steps)
        else:
            max_steps, epochs = _cap_epochs(data, manifests, epochs, cfg.trainer.max_steps)
    wandb = copy.deepcopy(cfg.wandb)
    wandb.name = f"{wandb.name or cfg.run.name}-{stage.name}"
    wandb.tags = list(wandb.tags) + [f"sft:{stage.name}"]
    return TrainSpec(
        run_name=f"{cfg.run.name}/{stage.name}", run_dir=Path(cfg.run.dir) / stage.name, wandb=wandb, optim=optim,
        deepspeed=cfg.deepspeed, trainer=cfg.trainer, data=data, model_cfg=cfg.model, build_model=build_model,
        tokenizer_dir=init_dir, config_yaml=config_yaml + f"# stage: {stage.name}\n",
        config_dict={**config_dict, "stage": stage.name}, split_documents=False, max_steps=max_steps,
        epochs=epochs, data_manifests=manifests,
    )


def _cap_epochs(data: DataConfig, manifests: list[dict], epochs: float, cap: int) -> tuple[int, float]:
    """Epoch-based stage under ``trainer.max_steps``: the smaller of the two, in steps."""
    from data.loader import PackedLoader

    if not manifests:
        return cap, 0.0
    loader = PackedLoader([(m["path"], m["weight"]) for m in manifests], split="train", seq_len=data.seq_len,
                          global_batch_rows=max(1, data.global_batch_tokens // data.seq_len), split_documents=False)
    steps = max(1, math.ceil(epochs * loader.padded_tokens_per_epoch / data.global_batch_tokens))
    return min(steps, cap), 0.0


def run(dcfg: DictConfig) -> int:
    from train.launch import run_specs

    cfg: SFTConfig = OmegaConf.to_object(dcfg)
    if cfg.optim.mup.enabled:
        raise ValueError("optim.mup.enabled=true is a pretraining option; SFT continues the exported model as is")
    config_yaml = OmegaConf.to_yaml(dcfg, resolve=True)
    config_dict = OmegaConf.to_container(dcfg, resolve=True)
    stages = stage_list(cfg)

    def make_specs(dry_run: bool):
        # Built lazily: stage k+1 reads stage k's export, which exists only once stage k has run.
        return [(lambda s=s: build_stage_spec(cfg, s, config_yaml, config_dict, dry_run)) for s in stages]

    return run_specs(cfg, make_specs)


@hydra.main(version_base=None, config_path="../recipes/sft", config_name="demo")
def _hydra_main(dcfg: DictConfig) -> None:
    code = run(dcfg)
    if code:
        sys.exit(code)


def main() -> None:
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
