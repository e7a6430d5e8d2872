"""Final export in the Hugging Face layout: ``save_pretrained`` weights + config, tokenizer, generation config.

SFT, DPO, evaluation and ``AutoModelForCausalLM.from_pretrained`` (after ``import sambay_model``) read it.
Under ZeRO-3 the partitioned parameters are gathered first. Written to a temporary directory and renamed.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import deepspeed
import torch

from data.atomic import atomic_dir
from data.tokenizer import load_tokenizer, save_generation_config
from train.runtime.distributed import DistInfo, barrier


def save_export(model: torch.nn.Module, tokenizer_dir: Path, out_dir: Path) -> None:
    """Write ``out_dir`` atomically from a model whose parameters are all materialised (rank 0 only)."""
    tokenizer = load_tokenizer(tokenizer_dir)
    if out_dir.exists():
        print(f"[export] replacing {out_dir} left by an interrupted run (no DONE)", flush=True)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        save_generation_config(tokenizer, tmp, bos_token_id=model.config.bos_token_id)


def export_model(engine, tokenizer_dir: Path, out_dir: Path, dist_info: DistInfo, zero_stage: int) -> None:
    """Collective: gather ZeRO-3 shards if needed; rank 0 writes the export."""
    model = engine.module
    gather = (deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
              if zero_stage == 3 else contextlib.nullcontext())
    with gather:
        if dist_info.is_main:
            save_export(model, Path(tokenizer_dir), Path(out_dir))
    barrier()
