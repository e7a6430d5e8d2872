"""AdamW parameter groups (standard parametrisation and muP++) and the hidden-matrix muP++ re-init.

Weight decay applies to hidden matrices only. No decay on "vector-like" parameters: norms, biases, the
(tied) embedding / LM head, the SSM ``A_log`` and ``D``, the dt bias, differential-attention lambda vectors
and the depthwise conv1d. The Phi-4-mini-flash pretraining used one group with decay on everything
(docs/architecture.md §15.1); excluding these from decay is the muP++ rule and the common practice, and
``A_log``/``D`` decaying towards 0 would change the SSM's time constants.
"""
from __future__ import annotations

import math

import torch
from deepspeed.ops.adam import DeepSpeedCPUAdam
from torch import nn

from train.config import ModelConfig, OptimConfig

# Name fragments that mark a parameter as vector-like regardless of its rank: A_log is [d_inner, d_state],
# conv1d.weight is [d_inner, 1, d_conv], the embedding is a matrix but an input lookup table.
_NO_DECAY_FRAGMENTS = ("A_log", "conv1d", "embed", "lm_head", "norm", "subln", "lambda_")


def is_vector_like(name: str, param: torch.Tensor) -> bool:
    """True for parameters that get no weight decay (and LR multiplier 1 under muP++)."""
    if param.ndim < 2:
        return True
    return any(fragment in name for fragment in _NO_DECAY_FRAGMENTS)


def mup_hidden_lr_multiplier(model_cfg: ModelConfig, cfg: OptimConfig) -> float:
    """muP++ Adam LR multiplier of hidden matrices: d0 / L (width is proportional to depth)."""
    return cfg.mup.base_depth / model_cfg.num_hidden_layers


def mup_global_lr(model_cfg: ModelConfig, cfg: OptimConfig, global_batch_tokens: int) -> float:
    """muP++ global LR: eta0 * sqrt(B / B0) * sqrt(d0 / L) (docs/architecture.md §14)."""
    lr = cfg.lr * math.sqrt(cfg.mup.base_depth / model_cfg.num_hidden_layers)
    if cfg.mup.scale_lr_with_batch:
        lr *= math.sqrt(global_batch_tokens / cfg.mup.base_batch_tokens)
    return lr


def global_lr(model_cfg: ModelConfig, cfg: OptimConfig, global_batch_tokens: int) -> float:
    """The peak LR before any per-group multiplier: ``optim.lr``, or its muP++ scaling when muP++ is on."""
    return mup_global_lr(model_cfg, cfg, global_batch_tokens) if cfg.mup.enabled else cfg.lr


def param_groups(model: nn.Module, model_cfg: ModelConfig, cfg: OptimConfig,
                 global_batch_tokens: int) -> list[dict]:
    """Two AdamW groups, ``decay`` (hidden matrices) and ``no_decay`` (vector-like), each with its own ``lr``.

    Tied parameters appear once (``named_parameters`` de-duplicates). Frozen parameters are left out: with LoRA
    (``train.runtime.lora``) the groups hold the adapters alone (matrices, so ``decay``).
    """
    lr = global_lr(model_cfg, cfg, global_batch_tokens)
    hidden_mult = mup_hidden_lr_multiplier(model_cfg, cfg) if cfg.mup.enabled else 1.0
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if is_vector_like(name, param) else decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": cfg.weight_decay, "lr": lr * hidden_mult},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]
    return [g for g in groups if g["params"]]


def group_summary(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names per group, for the dry run and the tests."""
    out: dict[str, list[str]] = {"decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            out["no_decay" if is_vector_like(name, param) else "decay"].append(name)
    return out


class _SkippableStep:
    """Mixin: ``step`` does nothing while ``skip`` is set (the trainer skips a step whose loss is not finite).

    DeepSpeed calls the client optimizer's ``step`` from its own and zeroes the gradients afterwards, so
    returning early leaves parameters and moments untouched. The flag is not cleared by ``step``: ZeRO calls
    ``step`` once per parameter group (or sub-group) within one engine step, so the trainer sets ``skip``
    before every optimizer step and it covers all of them.
    """

    skip: bool = False

    @torch.no_grad()
    def step(self, closure=None):
        if self.skip:
            return None
        return super().step(closure)


class SkippableAdamW(_SkippableStep, torch.optim.AdamW):
    """torch AdamW with a skippable step (ZeRO 0-3 without optimizer offload)."""


def _skippable_cpu_adam(groups: list[dict], betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    """DeepSpeedCPUAdam (AdamW mode) with a skippable step, for ZeRO-Offload.

    DeepSpeed refuses any other client optimizer with offload; a DeepSpeedCPUAdam instance is accepted and
    keeps our parameter groups, per-group LRs and scheduler. Constructing it JIT-builds the cpu_adam op (cached
    in TORCH_EXTENSIONS_DIR), which is why only offload runs create one.
    """
    cls = type("SkippableCPUAdam", (_SkippableStep, DeepSpeedCPUAdam), {})
    return cls(groups, betas=betas, eps=eps, adamw_mode=True)


def build_optimizer(model: nn.Module, model_cfg: ModelConfig, cfg: OptimConfig, global_batch_tokens: int,
                    offload: bool = False) -> torch.optim.Optimizer:
    """A client optimizer for DeepSpeed: torch AdamW, or DeepSpeedCPUAdam when the optimizer is offloaded.

    torch AdamW needs no JIT op build (fused_adam); ``offload`` is ``deepspeed.offload_optimizer``.
    """
    if len(cfg.betas) != 2:
        raise ValueError(f"optim.betas={list(cfg.betas)}: expected two values")
    groups = param_groups(model, model_cfg, cfg, global_batch_tokens)
    if not groups:
        raise ValueError("the model has no trainable parameters (with peft.enabled, check peft.target_modules)")
    betas = (cfg.betas[0], cfg.betas[1])
    if offload:
        return _skippable_cpu_adam(groups, betas, cfg.eps)
    return SkippableAdamW(groups, betas=betas, eps=cfg.eps)


@torch.no_grad()
def mup_reinit_hidden(model: nn.Module, generator: torch.Generator | None = None) -> int:
    """muP++ init: hidden matrices ~ U(+-1/sqrt(fan_in)). Returns how many tensors were re-initialised.

    Vector-like parameters (embedding, norms, SSM parameters) keep the model's own init.
    """
    count = 0
    for name, param in model.named_parameters():
        if is_vector_like(name, param) or param.device.type == "meta":
            continue
        bound = 1.0 / math.sqrt(param.shape[1])
        param.uniform_(-bound, bound, generator=generator)
        count += 1
    return count
