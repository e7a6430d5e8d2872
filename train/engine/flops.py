"""Training FLOPs per token of a SambaY model and model-FLOPs utilisation (MFU).

Counting convention (PaLM-style model FLOPs): a matmul of a token vector of width ``n`` by an ``n x m``
weight costs ``2*n*m``; training costs 3x the forward pass (backward = 2x forward); activation
recomputation is not counted; norms, activations, gates, softmax and biases are ignored. Per layer and
token, forward:

- MLP (every layer): ``2*d*2I + 2*I*d``.
- Mamba-1: in_proj ``2*d*2di``, conv1d ``2*di*k``, x_proj ``2*di*(r+2N)``, dt_proj ``2*r*di``,
  out_proj ``2*di*d``, and the selective scan ``9*di*N`` (discretise, update and read out the state: the
  count of the Mamba paper).
- self-attention (SWA and full): Wqkv ``2*d*(d + 2*kv*hd)``, out_proj ``2*d*d``; cross-attention: Wqkv
  ``2*d*d`` (queries only), out_proj ``2*d*d``.
- attention core: ``keys * (2*H*hd + 2*H*vd)`` (scores and weighted values), with ``keys`` the number of keys a
  query sees averaged over the sequence (``(T+1)/2`` causal, bounded by the window ``w`` for SWA) and ``vd``
  the value width per head: ``2*hd`` for differential attention (each of the two softmax maps of a head pair
  multiplies the concatenated ``[V1|V2]``), ``hd`` otherwise.
- GMU: in_proj ``2*d*di``, out_proj ``2*di*d``.
- LM head: ``2*d*V``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sambay_model.configuration_phi4flash import LayerRole, Phi4FlashConfig

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets (SXM parts).
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def mean_keys(seq_len: int, window: int | None) -> float:
    """Keys per query averaged over positions 1..T of a causal (optionally windowed) attention."""
    t = seq_len
    if window is None or window >= t:
        return (t + 1) / 2
    return (window * (window + 1) / 2 + (t - window) * window) / t


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward FLOPs per token by component; ``train`` = 3x the total."""

    mlp: float
    mamba: float
    attention_proj: float
    attention_core: float
    gmu: float
    lm_head: float

    @property
    def forward(self) -> float:
        return self.mlp + self.mamba + self.attention_proj + self.attention_core + self.gmu + self.lm_head

    @property
    def train(self) -> float:
        return 3.0 * self.forward


def flops_per_token(cfg: Phi4FlashConfig, seq_len: int, vocab_size: int | None = None) -> FlopsBreakdown:
    """Count for a model config, layer by layer after its roles (``Phi4FlashConfig.layer_role``)."""
    d, inter, n_heads, kv, hd = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
                                 cfg.num_key_value_heads, cfg.head_dim)
    di, n_state, k, r = cfg.mamba_d_inner, cfg.mamba_d_state, cfg.mamba_d_conv, cfg.mamba_dt_rank
    vocab = vocab_size if vocab_size is not None else cfg.vocab_size
    vd = 2 * hd if cfg.use_diff_attn else hd
    core_per_key = 2 * n_heads * hd + 2 * n_heads * vd
    mlp = mamba = proj = core = gmu = 0.0
    for i in range(cfg.num_hidden_layers):
        role = cfg.layer_role(i)
        mlp += 2 * d * 2 * inter + 2 * inter * d
        if role.is_mamba:
            mamba += (2 * d * 2 * di + 2 * di * k + 2 * di * (r + 2 * n_state) + 2 * r * di + 2 * di * d
                      + 9 * di * n_state)
        elif role in (LayerRole.SWA, LayerRole.FULL_ATTN):
            proj += 2 * d * (d + 2 * kv * hd) + 2 * d * d
            core += mean_keys(seq_len, cfg.sliding_window[i] if role == LayerRole.SWA else None) * core_per_key
        elif role == LayerRole.CROSS_ATTN:
            proj += 2 * d * d + 2 * d * d
            core += mean_keys(seq_len, None) * core_per_key
        else:  # LayerRole.GMU
            gmu += 2 * d * di + 2 * di * d
    return FlopsBreakdown(mlp=mlp, mamba=mamba, attention_proj=proj, attention_core=core, gmu=gmu,
                          lm_head=2 * d * vocab)


def device_peak_flops(device: torch.device, override: float = 0.0) -> float:
    """Peak FLOP/s of one device: ``override`` when > 0, else the bf16 table for known GPUs, else 0."""
    if override > 0:
        return override
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS:
        if key in name:
            return peak
    return 0.0


def mfu(tokens_per_s: float, train_flops_per_token: float, peak_per_device: float, world_size: int) -> float:
    """Achieved model FLOP/s over the peak of all devices (0 when the peak is unknown)."""
    if peak_per_device <= 0:
        return 0.0
    return tokens_per_s * train_flops_per_token / (peak_per_device * world_size)
