"""Pretraining entry point.

    torchrun --nproc_per_node=N -m train.pretrain [--config-name RECIPE] [key=value ...]
    python -m train.pretrain --config-name demo            # one process, no torchrun

Recipes live in ``recipes/pretrain/`` (schema :class:`train.config.PretrainConfig`). Relaunching the same
command resumes from the run directory's latest checkpoint; a finished run (``DONE``) is left alone.

Exit codes: 0 = finished, or stopped by SIGTERM/SIGUSR1 after saving a checkpoint (no ``DONE`` then: relaunch
to resume); 3 = non-finite loss (nothing saved after the last good checkpoint); 4 = another live run holds
run.dir (see train/run_lock.py); 1 = any other error.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from train.config import DataConfig, PretrainConfig, register_configs
from train.launch import run_specs


def resolve_tokenizer_dir(data: DataConfig, manifest: dict | None) -> Path | None:
    """``data.tokenizer``, else ``<first source>/../tokenizer`` (the data.prepare layout), else the manifest's path."""
    if data.tokenizer:
        return Path(data.tokenizer)
    if data.sources:
        sibling = Path(data.sources[0].path).parent / "tokenizer"
        if (sibling / "tokenizer.json").is_file():
            return sibling
    if manifest is not None and manifest["tokenizer"].get("path"):
        return Path(manifest["tokenizer"]["path"])
    return None


def read_sources(data: DataConfig, tokenizer_dir: Path | None, vocab_size: int | None,
                 required: bool = True) -> list[dict]:
    """Check every source against the tokenizer (and vocab); returns ``[{"path", "weight", "manifest"}]``.

    With ``required=False`` (dry run) missing shard sets are skipped instead of failing.
    """
    from data.shards import check_compatible

    out = []
    for i, src in enumerate(data.sources):
        path = Path(src.path)
        if not (path / "manifest.json").is_file():
            if required:
                raise FileNotFoundError(f"data.sources[{i}].path={src.path}: no shard set there (no manifest.json); "
                                        f"run `python -m data.prepare` first")
            continue
        manifest = check_compatible(path, tokenizer_dir, vocab_size)
        out.append({"path": str(path), "weight": src.weight, "manifest": manifest})
    return out


def build_spec(cfg: PretrainConfig, config_yaml: str, config_dict: dict, dry_run: bool):
    from data.shards import read_manifest
    from train.model_build import build_fresh, hf_config, load_export, resolve_vocab_size
    from train.trainer import TrainSpec

    if not cfg.data.sources:
        raise ValueError("data.sources is empty: the recipe must list at least one shard set")
    first = Path(cfg.data.sources[0].path)
    first_manifest = read_manifest(first) if (first / "manifest.json").is_file() else None
    if first_manifest is None and not dry_run:
        raise FileNotFoundError(f"data.sources[0].path={first}: no shard set there (no manifest.json); "
                                f"run `python -m data.prepare` first")
    tokenizer_dir = resolve_tokenizer_dir(cfg.data, first_manifest)
    tok_info = first_manifest["tokenizer"] if first_manifest else None
    if cfg.model.init_from:
        model_path = Path(cfg.model.init_from)

        def build_model(device):
            if str(device) == "meta":
                from transformers import AutoConfig
                from sambay_model import Phi4FlashForCausalLM
                import torch

                with torch.device("meta"):
                    return Phi4FlashForCausalLM(AutoConfig.from_pretrained(str(model_path)))
            return load_export(model_path, cfg.model.compute_backend).to(device)

        vocab = None
    else:
        vocab = resolve_vocab_size(cfg.model, tok_info["vocab_size"] if tok_info else None)
        config = hf_config(cfg.model, vocab_size=vocab, eos_token_id=tok_info["eos_token_id"] if tok_info else None,
                           mup=cfg.optim.mup)

        def build_model(device):
            return build_fresh(config, device, cfg.trainer.seed)

    manifests = read_sources(cfg.data, tokenizer_dir if tok_info else None, vocab, required=not dry_run)
    return TrainSpec(
        run_name=cfg.run.name, run_dir=Path(cfg.run.dir), wandb=cfg.wandb, optim=cfg.optim, deepspeed=cfg.deepspeed,
        trainer=cfg.trainer, data=cfg.data, model_cfg=cfg.model, build_model=build_model,
        tokenizer_dir=tokenizer_dir, config_yaml=config_yaml, config_dict=config_dict, split_documents=True,
        max_steps=cfg.trainer.max_steps, epochs=cfg.trainer.epochs, data_manifests=manifests,
    )


def run(dcfg: DictConfig) -> int:
    """Run a pretraining recipe; returns the process exit code."""
    cfg: PretrainConfig = OmegaConf.to_object(dcfg)
    config_yaml = OmegaConf.to_yaml(dcfg, resolve=True)
    config_dict = OmegaConf.to_container(dcfg, resolve=True)
    return run_specs(cfg, lambda dry: build_spec(cfg, config_yaml, config_dict, dry))


@hydra.main(version_base=None, config_path="../recipes/pretrain", config_name="demo")
def _hydra_main(dcfg: DictConfig) -> None:
    code = run(dcfg)
    if code:
        sys.exit(code)


def main() -> None:
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
