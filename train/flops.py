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

import math
from dataclasses import dataclass

import torch

from sambay_model.configuration_phi4flash import resolve_diff_attn

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets (SXM parts).
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def layer_roles(n_layers: int, backbone: str = "sambay", use_gmu: bool = True) -> list[str]:
    """Mixer type of each layer: ``mamba``, ``swa``, ``full``, ``cross`` or ``gmu`` (docs/architecture.md §1)."""
    if backbone == "transformer":
        return ["full"] * n_layers
    if backbone != "sambay":
        raise ValueError(f"model.backbone={backbone!r}: expected sambay or transformer")
    if n_layers % 4:
        raise ValueError(f"model.num_hidden_layers={n_layers}: SambaY needs a multiple of 4")
    half = n_layers // 2
    roles = []
    for i in range(n_layers):
        if i < half:
            roles.append("mamba" if i % 2 == 0 else "swa")
        elif i == half:
            roles.append("mamba")
        elif i == half + 1:
            roles.append("full")
        else:
            roles.append(("gmu" if use_gmu else "cross") if i % 2 == 0 else "cross")
    return roles


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


def flops_per_token(cfg, seq_len: int, vocab_size: int | None = None) -> FlopsBreakdown:
    """Count for a config with the ``Phi4FlashConfig`` / ``ModelConfig`` attribute names."""
    d = cfg.hidden_size
    inter = cfg.intermediate_size
    n_heads = cfg.num_attention_heads
    kv = cfg.num_key_value_heads
    hd = d // n_heads
    di = cfg.mamba_expand * d
    n_state = cfg.mamba_d_state
    k = cfg.mamba_d_conv
    r = math.ceil(d / 16) if str(cfg.mamba_dt_rank) == "auto" else int(cfg.mamba_dt_rank)
    vocab = vocab_size if vocab_size is not None else cfg.vocab_size
    if vocab is None:
        raise ValueError("vocab_size is unknown: set model.vocab_size or pass vocab_size")
    window = cfg.sliding_window
    if isinstance(window, (list, tuple)):  # HF-style per-layer list: the SWA layers' value
        window = next((w for w in window if w), None)
    vd = 2 * hd if resolve_diff_attn(getattr(cfg, "use_diff_attn", None), getattr(cfg, "backbone", "sambay")) else hd
    core_per_key = 2 * n_heads * hd + 2 * n_heads * vd

    roles = layer_roles(cfg.num_hidden_layers, getattr(cfg, "backbone", "sambay"), getattr(cfg, "use_gmu", True))
    mlp = mamba = proj = core = gmu = 0.0
    for role in roles:
        mlp += 2 * d * 2 * inter + 2 * inter * d
        if role == "mamba":
            mamba += (2 * d * 2 * di + 2 * di * k + 2 * di * (r + 2 * n_state) + 2 * r * di + 2 * di * d
                      + 9 * di * n_state)
        elif role in ("swa", "full"):
            proj += 2 * d * (d + 2 * kv * hd) + 2 * d * d
            core += mean_keys(seq_len, window if role == "swa" else None) * core_per_key
        elif role == "cross":
            proj += 2 * d * d + 2 * d * d
            core += mean_keys(seq_len, None) * core_per_key
        elif role == "gmu":
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
