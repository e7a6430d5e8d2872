"""LoRA through ``peft``: the one place that wraps a model in adapters and merges them back (``peft`` keys,
:class:`train.config.PeftConfig`; docs/finetune.md, "LoRA").

- SFT (the DeepSpeed engine) wraps the built model with :func:`wrap` before ``deepspeed.initialize``: the base is
  frozen, so the optimizer (``train.engine.optim``, trainable parameters only) holds the adapters alone.
- DPO hands :func:`lora_config` to TRL's ``DPOTrainer`` (``peft_config=``), which wraps the model itself and scores
  the reference with the adapters disabled; :func:`check_targets` runs first, so a bad name fails the same way.
- The export (``train.runtime.export``) calls :func:`merge_for_export`: the adapter is saved on its own in
  ``adapter/`` beside ``export/`` (peft's ``save_pretrained``), then merged into the base weights, so the export
  has exactly the tensor names of a run without LoRA (a hub snapshot in, a hub snapshot out).
"""
from __future__ import annotations

import difflib
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from data.atomic import atomic_dir
from train.config import PeftConfig

# The adapter's directory, beside the export (``run.dir/adapter`` next to ``run.dir/export``).
ADAPTER_DIR = "adapter"


def lora_config(cfg: PeftConfig) -> LoraConfig:
    """peft's ``LoraConfig`` for the ``peft`` section: adapters on ``target_modules``, biases left alone."""
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")


def check_targets(model: torch.nn.Module, target_modules: list[str]) -> None:
    """Every name in ``target_modules`` names at least one module of ``model`` (as peft matches: the full name or a
    dotted suffix of it, e.g. ``fc1`` or ``mlp.fc1``) and every module it names is an ``nn.Linear``; else an error
    naming ``peft.target_modules``."""
    modules = list(model.named_modules())
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in modules if isinstance(m, torch.nn.Linear)})
    for target in target_modules:
        matched = [m for n, m in modules if n == target or n.endswith("." + target)]
        if not matched:
            close = difflib.get_close_matches(target, linear, n=3)
            raise ValueError(f"peft.target_modules: {target!r} names no module of the model"
                             + (f" (did you mean {close}?)" if close else "") + f"; its Linear modules: {linear}")
        if not all(isinstance(m, torch.nn.Linear) for m in matched):
            kinds = sorted({type(m).__name__ for m in matched})
            raise ValueError(f"peft.target_modules: {target!r} names {kinds} modules; LoRA here adapts "
                             f"nn.Linear projections only: {linear}")


def wrap(model: torch.nn.Module, cfg: PeftConfig) -> PeftModel:
    """``model`` with LoRA adapters on ``cfg.target_modules`` and every base parameter frozen."""
    check_targets(model, list(cfg.target_modules))
    return get_peft_model(model, lora_config(cfg))


def is_peft(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model the adapters sit in (the ``Phi4FlashForCausalLM``), or ``model`` itself without adapters."""
    return model.get_base_model() if is_peft(model) else model


def adapter_dir_for(export_dir: Path) -> Path:
    """Where the adapter of the run exporting to ``export_dir`` is saved: ``adapter/`` beside it."""
    return Path(export_dir).parent / ADAPTER_DIR


def save_adapter(model: PeftModel, adapter_dir: Path) -> None:
    """The adapter weights and ``adapter_config.json`` (peft's layout), written atomically."""
    with atomic_dir(adapter_dir, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))


def merge_for_export(model: torch.nn.Module, export_dir: Path) -> torch.nn.Module:
    """The model an export writes: without adapters ``model`` itself; with them the adapter is saved first
    (:func:`adapter_dir_for`), then merged into the base weights, which are returned under their own names.

    Merging replaces the adapted layers in place, so this is the run's last use of ``model`` (the export comes after
    the final checkpoint and evaluation). Call with every parameter materialised (ZeRO-3: inside the gather)."""
    if not is_peft(model):
        return model
    save_adapter(model, adapter_dir_for(export_dir))
    return model.merge_and_unload()
