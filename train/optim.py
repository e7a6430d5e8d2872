"""AdamW parameter groups (standard parametrisation and muP++) and the hidden-matrix muP++ re-init.

Weight decay applies to hidden matrices only. No decay on "vector-like" parameters: norms, biases, the
(tied) embedding / LM head, the SSM ``A_log`` and ``D``, the dt bias, differential-attention lambda vectors
and the depthwise conv1d. The Phi-4-mini-flash pretraining used one group with decay on everything (spec
8.2); excluding these from decay is the muP++ rule and the common practice, and ``A_log``/``D`` decaying
towards 0 would change the SSM's time constants.
"""
from __future__ import annotations

import math

import torch
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
    """muP++ global LR: eta0 * sqrt(B / B0) * sqrt(d0 / L) (spec 8.3)."""
    lr = cfg.lr * math.sqrt(cfg.mup.base_depth / model_cfg.num_hidden_layers)
    if cfg.mup.scale_lr_with_batch:
        lr *= math.sqrt(global_batch_tokens / cfg.mup.base_batch_tokens)
    return lr


def param_groups(model: nn.Module, model_cfg: ModelConfig, cfg: OptimConfig,
                 global_batch_tokens: int) -> list[dict]:
    """Two AdamW groups, ``decay`` (hidden matrices) and ``no_decay`` (vector-like), each with its own ``lr``.

    Tied parameters appear once (``named_parameters`` de-duplicates). Frozen parameters are left out.
    """
    lr = mup_global_lr(model_cfg, cfg, global_batch_tokens) if cfg.mup.enabled else cfg.lr
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


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose next ``step`` can be cancelled (the trainer skips a step whose loss is not finite).

    DeepSpeed calls the client optimizer's ``step`` from its own (under ZeRO on the fp32 partitions) and zeroes
    the gradients afterwards, so returning early leaves parameters and moments untouched.
    """

    skip_next: bool = False

    @torch.no_grad()
    def step(self, closure=None):
        if self.skip_next:
            self.skip_next = False
            return None
        return super().step(closure)


def build_optimizer(model: nn.Module, model_cfg: ModelConfig, cfg: OptimConfig,
                    global_batch_tokens: int) -> SkippableAdamW:
    """A client torch AdamW (DeepSpeed wraps it; no fused_adam / cpu_adam JIT build)."""
    if len(cfg.betas) != 2:
        raise ValueError(f"optim.betas={list(cfg.betas)}: expected two values")
    groups = param_groups(model, model_cfg, cfg, global_batch_tokens)
    return SkippableAdamW(groups, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps)


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
