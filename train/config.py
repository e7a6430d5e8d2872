"""Typed configuration schemas shared by the training entry points.

Every recipe in ``recipes/`` is merged onto one of these dataclasses (registered in Hydra's ConfigStore by
:func:`register_pretrain_schema` / :func:`register_sft_schema`), so an override of a key that does not exist
fails with an error naming the key.
Defaults are stated in each class docstring; recipes override them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from data.layout import DEFAULT_DATA_DIR
from sambay_model.configuration_phi4flash import Phi4FlashConfig

# Phi4FlashConfig's field defaults: the official Phi-4-mini-flash architecture, written there and only there.
# The default of ``trainer.export_max_shard_size`` (LoopConfig), also what a direct call of the export uses.
EXPORT_MAX_SHARD_SIZE = "5GB"
OFFICIAL = {f.name: f.default for f in fields(Phi4FlashConfig)}


@dataclass
class RunConfig:
    """Where a run lives.

    name: run name, also the default W&B run name (default ``MISSING``: a recipe's own name, else derived at launch
        from the entry point, the recipe and the init checkpoint, e.g. ``sft-finetune-Phi-4-mini-flash-reasoning``;
        see ``train.runtime.run_name.default_run_name``).
    dir: run directory shared by all ranks (default ``runs/${run.name}``). Relaunching with the same
        directory resumes the run, or does nothing once it is complete (``DONE``), provided the config is the one
        saved in ``run.dir/config.yaml``: a relaunch with a different config is refused, listing the keys that differ
        (keys that do not change the training, such as ``wandb.*`` or ``trainer.log_every``, may change freely:
        ``train.runtime.run_dir.FREE_KEYS``).
    allow_config_change: accept a relaunch into ``run.dir`` whose config differs from the saved one (default
        False); the old config is then kept as ``config.prev-N.yaml``.
    """

    name: str = MISSING
    dir: str = "runs/${run.name}"
    allow_config_change: bool = False


@dataclass
class WandbConfig:
    """Weights & Biases logging (rank 0 only).

    project: W&B project (default ``sambay``).
    name: W&B run name (default ``None`` = ``run.name``).
    entity: W&B entity (default ``None`` = the account default).
    tags: run tags (default empty).
    mode: ``auto`` (default: ``online`` when an API key is configured via WANDB_API_KEY or netrc, else
        ``offline``), ``online``, ``offline`` or ``disabled``. The WANDB_MODE environment variable wins.
    group: W&B group (default ``None``).
    """

    project: str = "sambay"
    name: Optional[str] = None
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    mode: str = "auto"
    group: Optional[str] = None


@dataclass
class DeepSpeedConfig:
    """DeepSpeed engine settings (turned into a DeepSpeed JSON config by ``train.runtime.distributed``).

    zero_stage: ZeRO stage 0-3 (default 0).
    offload_optimizer: ZeRO-offload optimizer states to CPU (stage >= 1; default False). DeepSpeed then
        JIT-builds its ``cpu_adam`` op the first time (about 70 s).
    offload_param: offload parameters to CPU (stage 3 only; default False).
    precision: ``auto`` (default: bf16 on GPU, fp32 on CPU), ``bf16`` or ``fp32``. How bf16 runs (autocast over
        fp32 weights) and why: ``train.runtime.distributed.deepspeed_json``, the one place that explains it.
    grad_clip: global gradient-norm clipping threshold, 0 disables (default 1.0).
    overlap_comm: overlap gradient reduction with backward (default False: deterministic order on CPU).
    reduce_bucket_size: ZeRO reduce bucket size in elements (default 5e8).
    allgather_bucket_size: ZeRO-1/2 all-gather bucket size in elements (default 5e8).
    contiguous_gradients: ZeRO contiguous gradient buffer (default True).
    skip_shm_build: on CPU, skip DeepSpeed's JIT build of its shared-memory all-reduce op (30-45 s at every
        cold start); ranks then use plain gloo (default True).
    collective_timeout_s: how long a rank waits in one collective before it fails (default 900). It bounds the
        wait of the surviving nodes when a host vanishes without closing its sockets (a dead process's closed
        sockets are noticed at once; docs/clusters.md, "When a node dies"). Torch's own default is 30 minutes; 15
        still covers the longest legitimate wait, a barrier behind a multi-GB checkpoint write to shared storage.
    extra: any further DeepSpeed JSON keys, merged last (default empty).
    """

    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    precision: str = "auto"
    grad_clip: float = 1.0
    overlap_comm: bool = False
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    contiguous_gradients: bool = True
    skip_shm_build: bool = True
    collective_timeout_s: int = 900
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.collective_timeout_s <= 0:
            raise ValueError(f"deepspeed.collective_timeout_s={self.collective_timeout_s} must be > 0 (seconds)")


@dataclass
class ModelConfig:
    """SambaY architecture: the keys of ``sambay_model.Phi4FlashConfig``, each defaulting to that class's default,
    which is the official Phi-4-mini-flash architecture (the numbers are written there, not here), plus build
    options.

    vocab_size: embedding rows (default ``None``: taken from the data manifest, padded up to
        ``pad_vocab_to_multiple_of``).
    pad_vocab_to_multiple_of: round a manifest-derived vocab up to this multiple (default 64).
    hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, mb_per_layer,
    sliding_window, max_position_embeddings, hidden_act, layer_norm_eps, initializer_range, attention_dropout,
    resid_pdrop, embd_pdrop, tie_word_embeddings, mamba_d_state, mamba_d_conv, mamba_expand, mamba_dt_rank,
    mamba_conv_bias, mamba_proj_bias, use_diff_attn, use_gmu, backbone, compute_backend, lm_head_precision:
        default ``Phi4FlashConfig``'s (see its docstring for each value and meaning; ``lm_head_precision``: the LM
        head's GEMMs on CUDA, ``fp32``, ``tf32`` (the default) or ``bf16``).
    gradient_checkpointing: activation checkpointing of every decoder layer (default False).
    init_from: ``train.pretrain`` only: a Hugging Face export directory to load weights from instead of a fresh
        init (default ``None``; ``train.sft`` starts from ``sft.init_from`` and refuses this key).
    """

    vocab_size: Optional[int] = None
    pad_vocab_to_multiple_of: int = 64
    hidden_size: int = OFFICIAL["hidden_size"]
    intermediate_size: int = OFFICIAL["intermediate_size"]
    num_hidden_layers: int = OFFICIAL["num_hidden_layers"]
    num_attention_heads: int = OFFICIAL["num_attention_heads"]
    num_key_value_heads: int = OFFICIAL["num_key_value_heads"]
    mb_per_layer: int = OFFICIAL["mb_per_layer"]
    sliding_window: int = OFFICIAL["sliding_window"]
    max_position_embeddings: int = OFFICIAL["max_position_embeddings"]
    hidden_act: str = OFFICIAL["hidden_act"]
    layer_norm_eps: float = OFFICIAL["layer_norm_eps"]
    initializer_range: float = OFFICIAL["initializer_range"]
    attention_dropout: float = OFFICIAL["attention_dropout"]
    resid_pdrop: float = OFFICIAL["resid_pdrop"]
    embd_pdrop: float = OFFICIAL["embd_pdrop"]
    tie_word_embeddings: bool = OFFICIAL["tie_word_embeddings"]
    mamba_d_state: int = OFFICIAL["mamba_d_state"]
    mamba_d_conv: int = OFFICIAL["mamba_d_conv"]
    mamba_expand: int = OFFICIAL["mamba_expand"]
    mamba_dt_rank: str = OFFICIAL["mamba_dt_rank"]
    mamba_conv_bias: bool = OFFICIAL["mamba_conv_bias"]
    mamba_proj_bias: bool = OFFICIAL["mamba_proj_bias"]
    use_diff_attn: Optional[bool] = OFFICIAL["use_diff_attn"]
    use_gmu: bool = OFFICIAL["use_gmu"]
    backbone: str = OFFICIAL["backbone"]
    compute_backend: str = OFFICIAL["compute_backend"]
    lm_head_precision: str = OFFICIAL["lm_head_precision"]
    gradient_checkpointing: bool = False
    init_from: Optional[str] = None


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, a multiplier of ``optim.lr`` per optimizer step.

    name: ``cosine`` (linear warmup then cosine decay), ``linear`` (warmup then linear decay) or ``wsd``
        (warmup, stable, then linear decay over the last ``decay_fraction``) (default ``cosine``).
    warmup_steps: linear warmup from 0 (default 0; ``warmup_fraction`` used when 0).
    warmup_fraction: warmup as a fraction of the total steps when ``warmup_steps`` is 0 (default 0.0).
    min_lr_ratio: final LR as a fraction of the peak (default 0.0).
    decay_fraction: ``wsd`` only: fraction of the steps spent decaying (default 2/7, i.e. 5/7 stable).
    """

    name: str = "cosine"
    warmup_steps: int = 0
    warmup_fraction: float = 0.0
    min_lr_ratio: float = 0.0
    decay_fraction: float = 2.0 / 7.0


@dataclass
class MupConfig:
    """muP++ (docs/architecture.md §14): depth-muP LR multipliers, zero WD on vector-like params, global LR scaling.

    enabled: default False (standard parametrisation).
    base_depth: d0 (default 16).
    base_batch_tokens: B0 (default 2**21).
    scale_lr_with_batch: multiply the LR by sqrt(B/B0) (default True).
    reinit_hidden_uniform: re-initialise hidden matrices U(+-1/sqrt(fan_in)) (default True).
    base_head_dim: hd0 of the attention logit scale sqrt(hd0)/head_dim (default 128).
    The model-side multipliers follow from these: residual branches x 1/sqrt(2L), logits x d0/L.
    """

    enabled: bool = False
    base_depth: int = 16
    base_batch_tokens: int = 2**21
    scale_lr_with_batch: bool = True
    reinit_hidden_uniform: bool = True
    base_head_dim: int = 128


@dataclass
class OptimConfig:
    """AdamW (a client torch optimizer: no DeepSpeed JIT op build) and its schedule.

    lr: peak learning rate (default 5e-4, the Phi-4-mini-flash value).
    betas: (0.9, 0.95). eps: 1e-8. weight_decay: 0.1, applied to matrices only (never to norms, biases,
        embeddings, A_log, D, dt bias, lambda vectors, conv1d).
    schedule: see :class:`ScheduleConfig`.
    mup: see :class:`MupConfig`.
    """

    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    mup: MupConfig = field(default_factory=MupConfig)


@dataclass
class DataSource:
    """One shard set of a mixture: ``path`` (shard-set directory) and sampling ``weight`` (default 1.0)."""

    path: str = MISSING
    weight: float = 1.0


@dataclass
class DataConfig:
    """Training data: a weighted mixture of shard sets.

    dir: the prepared-data directory (``python -m data.prepare``'s ``out_dir``) the recipes write their source
        paths under, as ``${data.dir}/pretrain``, so that one override moves them all (default
        ``artifacts/data/demo``, ``data.layout.DEFAULT_DATA_DIR``).
    sources: the mixture (default empty; recipes set it).
    tokenizer: tokenizer directory the shards were made with (default ``None``: ``<first source>/../tokenizer``).
    seq_len: tokens per row (default 512).
    global_batch_tokens: tokens per optimizer step over all ranks; must be a multiple of
        ``seq_len * micro_batch_rows * world_size`` (default 8192).
    micro_batch_rows: rows per forward/backward on each rank (default 4); gradient accumulation fills the
        rest.
    val_split: held-out split for validation (default ``val``).
    """

    dir: str = DEFAULT_DATA_DIR
    sources: list[DataSource] = field(default_factory=list)
    tokenizer: Optional[str] = None
    seq_len: int = 512
    global_batch_tokens: int = 8192
    micro_batch_rows: int = 4
    val_split: str = "val"


@dataclass
class LoopConfig:
    """Run-loop settings every trainer honours (the DeepSpeed trainer and ``train.dpo``'s TRL one).

    max_steps: optimizer steps (default 100).
    save_every: checkpoint every N steps; 0 = only at the end (default 100).
    final_checkpoint: checkpoint at the end of the run (default True); False for a run that only measures
        (bench/gpu_check.py: a 1B checkpoint with optimizer states is ~17 GB): it still writes ``export/`` and
        ``DONE`` but cannot be resumed. With ``save_every`` > 0 TRL's trainer (``train.dpo``) still saves at the end.
    keep_last: checkpoints kept (default 2).
    log_every: log metrics every N steps (default 10).
    seed: seed of the init, the loader order and all RNGs (default 1234).
    dry_run: build and check everything, run no step, write nothing (default False).
    progress_bar: tqdm bar on rank 0 (default True).
    export_max_shard_size: largest weight file of an export in the hub layout (a run started from a published
        snapshot): above it the weights are split into ``model-0000i-of-0000n.safetensors`` with an index
        (default ``5GB``, transformers' own, which splits the published 7.7 GB bf16 snapshot into its two files);
        a size string (``500MB``, ``2GB``) or bytes.
    """

    max_steps: int = 100
    save_every: int = 100
    final_checkpoint: bool = True
    keep_last: int = 2
    log_every: int = 10
    seed: int = 1234
    dry_run: bool = False
    progress_bar: bool = True
    export_max_shard_size: str = EXPORT_MAX_SHARD_SIZE


@dataclass
class TrainerConfig(LoopConfig):
    """The DeepSpeed training loop of ``train.pretrain`` and ``train.sft``: :class:`LoopConfig` plus

    epochs: ``train.pretrain`` only: when > 0, the run also ends after ceil(epochs * padded_tokens_per_epoch /
        global_batch_tokens) steps, one pass counted in packed rows (padding included, see
        ``PackedLoader.padded_tokens_per_epoch``); with both set, whichever of max_steps (> 0) and epochs (> 0)
        comes first ends it (default 0.0 = max_steps alone). SFT stages set their own
        (``sft.stages[].epochs``) and ``train.sft`` refuses this key.
    eval_every: validation every N steps; 0 disables (default 0).
    eval_batches: validation batches of ``global_batch_tokens`` each (default 4).
    skip_nonfinite: skip a step whose loss is NaN/Inf instead of stopping the run (default False).
    peak_flops_per_device: peak FLOP/s used for MFU; 0 = look the device up in ``train.engine.flops`` (default 0,
        which gives MFU 0 on an unknown device such as a CPU).
    deterministic: ``torch.use_deterministic_algorithms`` (default False).
    export: write ``export/`` at the end (default True).
    """

    epochs: float = 0.0
    eval_every: int = 0
    eval_batches: int = 4
    skip_nonfinite: bool = False
    peak_flops_per_device: float = 0.0
    deterministic: bool = False
    export: bool = True


@dataclass
class PretrainConfig:
    """Schema of ``train.pretrain`` recipes."""

    run: RunConfig = field(default_factory=RunConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# The Linear projections of every SambaY layer kind (sambay_model/modeling_phi4flash.py), by module name: attention
# ``Wqkv`` (fused q/k/v; queries only in cross-attention) and ``out_proj``; Mamba ``in_proj`` (x and gate),
# ``x_proj`` (dt/B/C) and ``out_proj``; GMU ``in_proj`` and ``out_proj``; MLP ``fc1`` (fused gate/up) and ``fc2``.
# Left out: Mamba's ``dt_proj`` (its weight is read directly with F.linear, so an adapter would never run), the tied
# embedding / LM head, and the non-Linear parameters (conv1d, A_log, D, norms).
LORA_TARGET_MODULES = ("Wqkv", "out_proj", "in_proj", "x_proj", "fc1", "fc2")


@dataclass
class PeftConfig:
    """LoRA adapters through ``peft`` for ``train.sft`` and ``train.dpo`` (``train.runtime.lora``; docs/finetune.md,
    "LoRA").

    enabled: train LoRA adapters on a frozen base instead of every weight (default False). The optimizer holds the
        adapters only; DPO's reference is the base with the adapters disabled (TRL's own mechanism, no second copy
        of the model); the export holds the merged full weights in the layout it has without LoRA (a hub snapshot
        in, a hub snapshot out), and the adapter alone is saved beside it in ``run.dir/adapter/`` (peft's
        ``save_pretrained``, loadable with ``PeftModel.from_pretrained``).
    r: adapter rank (default 16).
    alpha: LoRA alpha; the update is scaled by ``alpha / r`` (default 32).
    dropout: dropout on the adapters' input (default 0.05).
    target_modules: names of the ``nn.Linear`` modules that get adapters, matched as peft does (a module's name or
        a dotted suffix of it: ``fc1``, ``mlp.fc1``); every name must match Linear modules of the model only
        (default ``LORA_TARGET_MODULES``: every projection of every layer kind: attention ``Wqkv``/``out_proj``,
        Mamba ``in_proj``/``x_proj``/``out_proj``, GMU ``in_proj``/``out_proj``, MLP ``fc1``/``fc2``; not Mamba's
        ``dt_proj``, whose weight the scan reads directly, nor the tied embedding / LM head).
    """

    enabled: bool = False
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGET_MODULES))

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"peft.r={self.r} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"peft.dropout={self.dropout} must be in [0, 1)")
        if not self.target_modules:
            raise ValueError("peft.target_modules is empty: name at least one Linear module (docs/finetune.md)")


@dataclass
class SFTStageConfig:
    """One SFT stage, run in ``run.dir/<name>/`` from the previous stage's ``export/``.

    name: stage name (directory name) (default ``MISSING``).
    sources: the stage's data mixture of ``kind: sft`` shard sets (default ``MISSING``).
    seq_len: maximum sequence length (default 1024).
    lr: peak learning rate (default 1e-5).
    max_steps: optimizer steps (default 0 = derive from ``epochs``).
    epochs: passes over the mixture (default 1.0; used when ``max_steps`` is 0).
    schedule: the stage's LR schedule (default: cosine, 10% warmup).
    global_batch_tokens: default ``None`` = ``data.global_batch_tokens``.
    micro_batch_rows: default ``None`` = ``data.micro_batch_rows``.
    overlong: conversations longer than ``seq_len``: ``truncate`` (default: train on the first ``seq_len`` tokens
        and warn with the count, the assistant tokens cut and how many keep no answer) or ``error`` (refuse to
        start, naming the source); see ``data.sft_shards.check_overlong``.
    """

    name: str = MISSING
    sources: list[DataSource] = MISSING
    seq_len: int = 1024
    lr: float = 1e-5
    max_steps: int = 0
    epochs: float = 1.0
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_fraction=0.1))
    global_batch_tokens: Optional[int] = None
    micro_batch_rows: Optional[int] = None
    overlong: str = "truncate"


@dataclass
class SFTDataConfig:
    """SFT batch settings shared by the stages; each stage brings its own sources and sequence length
    (``sft.stages[]``), and its tokenizer is its init export's, so ``data`` has no ``sources``, ``seq_len`` or
    ``tokenizer`` here.

    dir: the prepared-data directory the stage sources are written under (``${data.dir}/sft/<stage>``)
        (default ``artifacts/data/demo``).
    global_batch_tokens: tokens per optimizer step, unless the stage sets its own (default 8192).
    micro_batch_rows: rows per forward/backward on each rank, unless the stage sets its own (default 4).
    val_split: held-out split for validation (default ``val``).
    """

    dir: str = DEFAULT_DATA_DIR
    global_batch_tokens: int = 8192
    micro_batch_rows: int = 4
    val_split: str = "val"

    def for_stage(self, stage: SFTStageConfig, tokenizer: str) -> DataConfig:
        """The training data of one stage."""
        return DataConfig(dir=self.dir, sources=list(stage.sources), tokenizer=tokenizer, seq_len=stage.seq_len,
                          global_batch_tokens=stage.global_batch_tokens or self.global_batch_tokens,
                          micro_batch_rows=stage.micro_batch_rows or self.micro_batch_rows, val_split=self.val_split)


@dataclass
class SFTOptimConfig:
    """AdamW of the SFT stages; each stage sets its own ``lr`` and ``schedule`` (``sft.stages[]``).

    betas: (0.9, 0.95). eps: 1e-8. weight_decay: 0.1, applied to matrices only.
    """

    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1

    def for_stage(self, stage: SFTStageConfig) -> OptimConfig:
        """The optimizer settings of one stage."""
        return OptimConfig(lr=stage.lr, betas=list(self.betas), eps=self.eps, weight_decay=self.weight_decay,
                           schedule=copy.deepcopy(stage.schedule))


@dataclass
class SFTSection:
    """SFT-specific keys.

    init_from: pretrained export directory the first stage starts from: a stage's ``export/`` or a hub snapshot
        such as microsoft/Phi-4-mini-flash-reasoning downloaded (default ``MISSING``).
    stages: the stages, run in order (default empty).
    stages_to_run: restrict to these stage names (default ``None`` = all).

    Fine-tuning on your own data (docs/finetune.md): with ``train_data`` set, the run is one stage in ``run.dir``
    itself (its export is ``run.dir/export``), built from the keys below; ``stages`` must then be empty.
    train_data: a chat data file (JSONL, JSON, Parquet) or ``datasets`` save_to_disk directory in TRL's ``messages``
        or ``prompt``/``completion`` format, or a list of them (default ``None``: run ``stages``). Tokenized with
        ``init_from``'s tokenizer and chat template into ``run.dir/data/<key>/`` (``data.sft_cache``).
    eval_data: held-out chat data in the same forms (default ``None``: hold out ``eval_fraction`` of train_data).
    eval_fraction: the share of ``train_data`` held out when ``eval_data`` is None; 0 holds out nothing
        (default 0.01).
    seq_len: row length in tokens (default ``SFTStageConfig``'s, 1024).
    lr: peak learning rate (default ``SFTStageConfig``'s, 1e-5).
    epochs: passes over the data (default ``SFTStageConfig``'s, 1.0); ``trainer.max_steps > 0`` caps the run.
    """

    init_from: str = MISSING
    stages: list[SFTStageConfig] = field(default_factory=list)
    stages_to_run: Optional[list[str]] = None
    train_data: Any = None
    eval_data: Any = None
    eval_fraction: float = 0.01
    seq_len: int = SFTStageConfig.seq_len
    lr: float = SFTStageConfig.lr
    epochs: float = SFTStageConfig.epochs


@dataclass
class SFTConfig:
    """Schema of ``train.sft`` recipes: the pretraining sections, less what the stages set, plus ``sft``.

    ``model``: the architecture keys stand in for the init export's only in a dry run without it (training reads
    the export's ``config.json``); ``gradient_checkpointing`` and ``compute_backend`` always apply;
    ``model.init_from`` and ``trainer.epochs`` are refused (``sft.init_from``, ``sft.stages[].epochs``).
    ``peft``: LoRA instead of full fine-tuning (:class:`PeftConfig`, default off), for every stage.
    """

    run: RunConfig = field(default_factory=RunConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: SFTOptimConfig = field(default_factory=SFTOptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sft: SFTSection = field(default_factory=SFTSection)
    peft: PeftConfig = field(default_factory=PeftConfig)

    def __post_init__(self) -> None:
        if self.model.init_from is not None:
            raise ValueError(f"model.init_from={self.model.init_from!r}: train.sft ignores it; the first stage "
                             f"starts from sft.init_from")
        if self.trainer.epochs:
            raise ValueError(f"trainer.epochs={self.trainer.epochs}: train.sft ignores it; set each stage's "
                             f"sft.stages[].epochs (trainer.max_steps > 0 caps every stage)")
        if self.sft.train_data is not None and self.sft.stages:
            raise ValueError("sft.stages and sft.train_data are both set: a run trains either the recipe's stages "
                             "or one stage on sft.train_data; set sft.stages=[] or leave sft.train_data unset")


def register_pretrain_schema() -> None:
    """Register :class:`PretrainConfig` with Hydra's ConfigStore as ``pretrain_schema`` (idempotent)."""
    ConfigStore.instance().store(name="pretrain_schema", node=PretrainConfig)


def register_sft_schema() -> None:
    """Register :class:`SFTConfig` with Hydra's ConfigStore as ``sft_schema`` (idempotent)."""
    ConfigStore.instance().store(name="sft_schema", node=SFTConfig)
