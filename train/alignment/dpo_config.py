"""Typed schema of ``train.dpo`` recipes (registered as ``dpo_schema``; an unknown key is an error naming it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from train.config import DeepSpeedConfig, LoopConfig, PeftConfig, RunConfig, WandbConfig
from train.evals.generation import SamplingConfig

REFERENCE_MODES = ("precomputed", "frozen_copy")


@dataclass
class OnPolicyConfig:
    """On-policy preference pairs sampled from the init (SFT) model and labelled by the math grader.

    enabled: build them (default False: offline pairs only).
    problems: reasoning JSONL to sample on (default ``None`` = ``<dpo.data_dir>/reasoning/train.jsonl``).
    num_problems: first N problems used (default 64).
    sampling: k samples per problem, temperature, top-p (default: k=4, temperature 0.8, top-p 0.95, 96 tokens).
    mix: ``append`` (default: on-policy pairs added to the offline ones) or ``replace`` (on-policy only).
    """

    enabled: bool = False
    problems: Optional[str] = None
    num_problems: int = 64
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(num_samples=4, temperature=0.8, top_p=0.95, max_new_tokens=96))
    mix: str = "append"


@dataclass
class DPOSection:
    """DPO settings.

    init_from: the model policy and reference start from: a sambay export (e.g. an SFT run's ``export/``) or a
        published hub snapshot directory (default ``MISSING``).
    train_data: your own preference pairs: a JSONL/JSON/Parquet file, a list of them, or a ``datasets``
        ``save_to_disk`` directory, in any TRL preference format (``data.preference``) (default ``None``: the
        prepared data's ``<data_dir>/preference/train.jsonl``). One of ``train_data`` / ``data_dir`` is required.
    eval_data: held-out pairs, same kinds and formats (default ``None``: with ``train_data``, a held-out split of
        it, see ``eval_fraction``; else ``<data_dir>/preference/heldout.jsonl``).
    eval_fraction: share of ``train_data`` split off as held-out pairs when ``eval_data`` is not given, at least
        one pair, at most ``heldout_limit`` when that is set; the split is seeded by ``trainer.seed`` and its size
        logged (default 0.05).
    data_dir: output of ``data.prepare`` (demo data; its tokenizer must be the model's) (default ``None``).
    train_limit: cap on the offline training pairs, the first N; 0 = every pair. A cap prints how many pairs it
        drops (default 0).
    heldout_limit: held-out pairs scored after training, the first N; 0 = all (default 0).
    epochs: passes over the training pairs when ``trainer.max_steps`` is 0 (default 1.0); with
        ``trainer.max_steps`` > 0 that many steps run and the run prints how much of the pairs they cover.
    check_tokenizer: with ``data_dir``, the model's tokenizer fingerprint must equal ``<data_dir>/tokenizer``'s
        (default True).
    beta: DPO temperature (default 0.1).
    loss_type: TRL loss type(s), e.g. [sigmoid], [ipo], [sigmoid, sft] (default [sigmoid]).
    loss_weights: weight per loss type (default ``None`` = all 1).
    reference: ``precomputed`` (default: reference log-probs computed once before training with the init
        model, then no reference model in memory) or ``frozen_copy`` (a frozen copy of the init model).
    max_length: prompt + completion tokens, truncated by ``truncation_mode`` (default 512).
    truncation_mode: ``keep_start`` (default) or ``keep_end``.
    lr: peak learning rate (default 5e-7).
    lr_scheduler: HF scheduler name (default ``cosine``).
    warmup_steps: warmup optimizer steps; a float < 1 is a fraction of the run (default 0.1).
    weight_decay: AdamW weight decay (default 0.0).
    per_device_batch_size: pairs per forward on each rank (default 8).
    gradient_accumulation_steps: micro-batches per optimizer step (default 1).
    gradient_checkpointing: activation checkpointing of the decoder layers (default False).
    heldout_batch_size: pairs per forward when scoring held-out pairs (default 16).
    on_policy: see :class:`OnPolicyConfig`.
    """

    init_from: str = MISSING
    train_data: Optional[Any] = None  # a path or a list of paths
    eval_data: Optional[Any] = None
    eval_fraction: float = 0.05
    data_dir: Optional[str] = None
    train_limit: int = 0
    heldout_limit: int = 0
    epochs: float = 1.0
    check_tokenizer: bool = True
    beta: float = 0.1
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: Optional[list[float]] = None
    reference: str = "precomputed"
    max_length: int = 512
    truncation_mode: str = "keep_start"
    lr: float = 5e-7
    lr_scheduler: str = "cosine"
    warmup_steps: float = 0.1
    weight_decay: float = 0.0
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    heldout_batch_size: int = 16
    on_policy: OnPolicyConfig = field(default_factory=OnPolicyConfig)

    def __post_init__(self) -> None:
        if self.reference not in REFERENCE_MODES:
            raise ValueError(f"dpo.reference={self.reference!r}: expected one of {REFERENCE_MODES}")
        if self.on_policy.mix not in ("append", "replace"):
            raise ValueError(f"dpo.on_policy.mix={self.on_policy.mix!r}: expected append or replace")
        if self.beta <= 0:
            raise ValueError(f"dpo.beta must be > 0, got {self.beta}")
        if self.epochs <= 0:
            raise ValueError(f"dpo.epochs must be > 0, got {self.epochs}")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"dpo.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.train_limit < 0 or self.heldout_limit < 0:
            raise ValueError(f"dpo.train_limit={self.train_limit}, dpo.heldout_limit={self.heldout_limit}: a cap "
                             "is a count of pairs, 0 = all")


@dataclass
class DPORunConfig:
    """Schema of ``train.dpo`` recipes.

    run, wandb, deepspeed: shared sections (``train.config``). DeepSpeed is passed to TRL
        (``DPOConfig(deepspeed=...)``) when ``deepspeed.zero_stage >= 1``; stage 0 runs plain DDP.
    trainer: the run-loop keys every trainer honours (:class:`train.config.LoopConfig`); the DeepSpeed trainer's
        other keys (``eval_every``, ``export``, ...) do not exist here, so setting one is an error naming it.
    dpo: see :class:`DPOSection`.
    peft: LoRA adapters instead of full DPO (:class:`train.config.PeftConfig`, default off): TRL wraps the model
        (``peft_config=``) and the reference is the init model with the adapters disabled, so
        ``dpo.reference=frozen_copy`` is refused with it.
    """

    run: RunConfig = field(default_factory=RunConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    trainer: LoopConfig = field(default_factory=LoopConfig)
    dpo: DPOSection = field(default_factory=DPOSection)
    peft: PeftConfig = field(default_factory=PeftConfig)

    def __post_init__(self) -> None:
        # The HF Trainer prunes old checkpoints right after writing a new one, before train.runtime.hf_resume marks the
        # new one COMPLETE: with one kept, a kill in that instant leaves no checkpoint to resume from.
        if self.trainer.keep_last < 2:
            raise ValueError(f"trainer.keep_last={self.trainer.keep_last}: train.dpo keeps at least 2 checkpoints "
                             "(see train/runtime/hf_resume.py)")
        if self.peft.enabled and self.dpo.reference == "frozen_copy":
            raise ValueError("peft.enabled=true with dpo.reference=frozen_copy: with LoRA the reference is the init "
                             "model with the adapters disabled (no copy); set dpo.reference=precomputed or leave "
                             "peft.enabled=false")


def register_dpo_schema() -> None:
    """Register :class:`DPORunConfig` with Hydra's ConfigStore as ``dpo_schema`` (idempotent)."""
    ConfigStore.instance().store(name="dpo_schema", node=DPORunConfig)
