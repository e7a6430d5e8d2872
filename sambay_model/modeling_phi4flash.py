"""SambaY / Phi-4-mini-flash causal LM (docs/architecture.md §1-§9, §11-§13), with the Transformer++ baseline as a
config option.

Layer roles (``LayerRole``) by index i of L layers (``Phi4FlashConfig.layer_role``): i < L/2 even: Mamba; i < L/2
odd: sliding-window attention; i = L/2: Mamba that also exports its pre-gate scan output as the GMU memory;
i = L/2+1: the one full attention layer, whose K,V every cross-attention layer reuses; i >= L/2+2: GMU (even) /
cross-attention (odd).
Every layer is ``h = x + mixer(LN1(x)); out = h + MLP(LN2(h))`` with the residual stream kept in fp32.
What a forward's layers share beyond their input (segment plan from documents, padding and the cache; positions;
attention masks) is the ``ForwardContext`` of ``forward_context.py``, built once per forward by the backbone.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from . import ops
from .cache import Phi4FlashCache
from .cache_names import CACHE_FIELD, cache_in, check_left_padded, pick_cache
from .configuration_phi4flash import LayerRole, Phi4FlashConfig
from .decode_attention import last_query_attention, last_query_probs
from .forward_context import ForwardContext, build_forward_context
from .lm_head_loss import chunked_causal_lm_loss


def _keep_fp32_params(module: nn.Module, names: tuple[str, ...]) -> None:
    """Undo a cast to half precision for ``names`` (a cast to float64 is kept: tests run the model in float64): the SSM
    decay/skip and the DA lambdas stay fp32 whatever the model dtype (docs/architecture.md §12)."""
    for name in names:
        p = getattr(module, name, None)
        if p is not None and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()


def residual_dtype(dtype: torch.dtype) -> torch.dtype:
    """The residual stream is at least fp32 (docs/architecture.md §2: "reduce error accumulation")."""
    return torch.promote_types(dtype, torch.float32)


class OutProj(nn.Linear):
    """Output projection of a residual branch: SP init uses std / sqrt(2 * num_layers) (docs/architecture.md §13)."""


def block_norm(config: Phi4FlashConfig) -> nn.Module:
    """The input / post-attention / final norm: LayerNorm with bias in SambaY (the official model), RMSNorm in the
    Transformer++ baseline (ArchScale's definition)."""
    if config.backbone == "transformer":
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


# --------------------------------------------------------------------------------------------------------------------
# Mixers
# --------------------------------------------------------------------------------------------------------------------
class Phi4FlashMamba(nn.Module):
    """Mamba-1 (S6) mixer (docs/architecture.md §4). With ``exports_memory`` it also returns its pre-gate scan output
    (the GMU memory, incl. the D skip) for every token."""

    def __init__(self, config: Phi4FlashConfig, layer_idx: int, exports_memory: bool):
        super().__init__()
        self.layer_idx = layer_idx
        self.exports_memory = exports_memory
        d, di, n, r = config.hidden_size, config.mamba_d_inner, config.mamba_d_state, config.mamba_dt_rank
        self.d_conv = config.mamba_d_conv
        self.d_state, self.dt_rank = n, r
        self.in_proj = nn.Linear(d, 2 * di, bias=config.mamba_proj_bias)
        self.conv1d = nn.Conv1d(di, di, self.d_conv, groups=di, padding=self.d_conv - 1, bias=config.mamba_conv_bias)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di, dtype=torch.float32))
        self.out_proj = OutProj(di, d, bias=config.mamba_proj_bias)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        _keep_fp32_params(self, ("A_log", "D"))
        return self

    def forward(
        self, x: torch.Tensor, ctx: ForwardContext, cache: Phi4FlashCache | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        xs, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # [B, d_inner, T] each
        if ctx.real is not None:
            # Padding enters neither the conv taps nor the scan state: zero inputs keep a zero state at zero.
            xs = xs * ctx.real[:, None, :].to(xs.dtype)
        conv_state, ssm_state = cache.mamba_state(self.layer_idx) if cache is not None else (None, None)
        weight = self.conv1d.weight.squeeze(1)
        single_step = (conv_state is not None and xs.shape[2] == 1
                       and (ctx.resets is None or not bool(ctx.resets.any())))
        if single_step:
            # The decode kernels keep the last d_conv inputs; we cache only the d_conv - 1 the next token needs.
            u, _ = ops.causal_conv1d_update(xs[:, :, 0], F.pad(conv_state.to(xs.dtype), (1, 0)), weight,
                                            self.conv1d.bias, activation="silu", backend=ctx.backend)
            u = u.unsqueeze(-1)
        else:
            u = ops.causal_conv1d(xs, weight, self.conv1d.bias, resets=ctx.resets, initial_state=conv_state,
                                  activation="silu", backend=ctx.backend)
        if ctx.real is not None:
            u = u * ctx.real[:, None, :].to(u.dtype)
        dt_low, b, c = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt_low, self.dt_proj.weight).transpose(1, 2)  # bias goes in as delta_bias
        A = -torch.exp(self.A_log)
        dt_bias = self.dt_proj.bias.to(self.A_log.dtype)
        if single_step:
            y, last_state = ops.selective_state_update(
                ssm_state, u[:, :, 0], delta[:, :, 0], A, b[:, 0], c[:, 0], self.D, dt_bias=dt_bias,
                dt_softplus=True, backend=ctx.backend)
            y = y.unsqueeze(-1)
        else:
            y, last_state = ops.selective_scan(
                u, delta, A, b.transpose(1, 2), c.transpose(1, 2), self.D, delta_bias=dt_bias,
                delta_softplus=True, resets=ctx.resets, initial_state=ssm_state, return_last_state=True,
                backend=ctx.backend)
        if cache is not None:
            # The decode kernels' state is the last d_conv inputs of the last document; the next token needs the
            # d_conv - 1 newest of them.
            history = ops.conv_state_after(xs, self.d_conv, ctx.resets, conv_state)
            cache.set_mamba_state(self.layer_idx, history[:, :, 1:].contiguous(), last_state.to(x.dtype))
        y = y.to(x.dtype)
        out = self.out_proj((y * F.silu(z)).transpose(1, 2))
        return out, (y.transpose(1, 2) if self.exports_memory else None)


class Phi4FlashGMU(nn.Module):
    """Gated Memory Unit (docs/architecture.md §7): ``out_proj(memory * silu(in_proj(x)))``, memory from layer L/2."""

    def __init__(self, config: Phi4FlashConfig):
        super().__init__()
        self.in_proj = nn.Linear(config.hidden_size, config.mamba_d_inner, bias=False)
        self.out_proj = OutProj(config.mamba_d_inner, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.out_proj(memory.to(x.dtype) * F.silu(self.in_proj(x)))


class DiffAttentionCore(nn.Module):
    """Differential attention over already projected heads (docs/architecture.md §6), stored as
    ``attn.inner_cross_attn``.

    Computed as two attentions with V of width 2*head_dim (softmax(Q1 K1) [V1|V2], softmax(Q2 K2) [V1|V2]), which
    equals the four-call form of the reference.
    """

    def __init__(self, head_dim: int, layer_idx: int, eps: float):
        super().__init__()
        self.head_dim = head_dim
        # The global layer index, as in the reference (not the index among attention layers).
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)
        self.lambda_q1 = nn.Parameter(torch.zeros(head_dim, dtype=torch.float32))
        self.lambda_k1 = nn.Parameter(torch.zeros(head_dim, dtype=torch.float32))
        self.lambda_q2 = nn.Parameter(torch.zeros(head_dim, dtype=torch.float32))
        self.lambda_k2 = nn.Parameter(torch.zeros(head_dim, dtype=torch.float32))
        self.subln = nn.RMSNorm(2 * head_dim, eps=eps)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        _keep_fp32_params(self, ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"))
        return self

    def lambda_full(self) -> torch.Tensor:
        return (torch.exp((self.lambda_q1 * self.lambda_k1).sum()) - torch.exp((self.lambda_q2 * self.lambda_k2).sum())
                + self.lambda_init)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        """q ``[B, Hq, Tq, d]``, k/v ``[B, Hkv, Tk, d]`` -> ``[B, Tq, Hq * d]``."""
        v_both = torch.cat([v[:, 0::2], v[:, 1::2]], dim=-1)
        a1 = ops.attention(q[:, 0::2], k[:, 0::2], v_both, **attn_kwargs)
        a2 = ops.attention(q[:, 1::2], k[:, 1::2], v_both, **attn_kwargs)
        return self._combine(a1, a2)

    def forward_last_query(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                           visible: torch.Tensor | None) -> torch.Tensor:
        """The same for one query at the last position (decode). Both softmax maps of a head pair multiply the same
        ``[V1|V2]``, so they are stacked and V is read once, in place (not concatenated): a decode step of DA reads
        the cached K,V once, like plain attention."""
        p1 = last_query_probs(q[:, 0::2], k[:, 0::2], scale, visible)  # [B, Hkv/2, g, N]
        p2 = last_query_probs(q[:, 1::2], k[:, 1::2], scale, visible)
        g = p1.shape[2]
        probs = torch.cat([p1, p2], dim=2).to(v.dtype)  # [B, Hkv/2, 2g, N]
        both = torch.cat([torch.matmul(probs, v[:, 0::2]), torch.matmul(probs, v[:, 1::2])], dim=-1)
        b, half = q.shape[0], q.shape[1] // 2
        a1 = both[:, :, :g].reshape(b, half, 1, both.shape[-1])
        a2 = both[:, :, g:].reshape(b, half, 1, both.shape[-1])
        return self._combine(a1, a2)

    def _combine(self, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
        o = a1 - self.lambda_full().to(a1.dtype) * a2
        o = self.subln(o) * (1.0 - self.lambda_init)  # [B, Hq/2, Tq, 2d]
        # [Hq/2, 2d] flattens to the same vector as the inverse stripe [Hq, d].
        return o.transpose(1, 2).flatten(2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE (rotate-half form) for ``[B, H, T, d]`` at absolute ``positions`` ``[T]``, computed in fp32 (angles and
    the rotation, as ArchScale's Transformer++ does: bf16 angles lose whole radians at long positions)."""
    d = x.shape[-1]
    wide = torch.promote_types(x.dtype, torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, device=x.device, dtype=wide) / d))
    angles = positions.to(wide)[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    xw = x.to(wide)
    return (xw * emb.cos() + rotate_half(xw) * emb.sin()).to(x.dtype)


class Phi4FlashAttention(nn.Module):
    """Sliding-window, full or cross attention (docs/architecture.md §5). Self-attention layers own a fused ``Wqkv``
    laid out ``[Q | K | V]``; cross-attention layers project queries only and read the shared K,V of layer L/2+1."""

    def __init__(self, config: Phi4FlashConfig, layer_idx: int, role: LayerRole):
        super().__init__()
        self.layer_idx = layer_idx
        self.role = role
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        self.window = config.sliding_window[layer_idx] if role == LayerRole.SWA else None
        self.rope_theta = config.rope_theta if config.backbone == "transformer" else None
        self.softmax_scale = (config.attention_multiplier if config.attention_multiplier is not None
                              else self.head_dim ** -0.5)
        q_width = self.num_heads * self.head_dim
        kv_width = 0 if role == LayerRole.CROSS_ATTN else 2 * self.num_kv_heads * self.head_dim
        # SambaY (ArchScale attn_bias / attn_out_bias) has biases on both projections; Transformer++ has none.
        bias = config.backbone == "sambay"
        self.Wqkv = nn.Linear(config.hidden_size, q_width + kv_width, bias=bias)
        self.out_proj = OutProj(q_width, config.hidden_size, bias=bias)
        self.inner_cross_attn = (
            DiffAttentionCore(self.head_dim, layer_idx, config.layer_norm_eps) if config.use_diff_attn else None)

    def _heads(self, x: torch.Tensor, num_heads: int) -> torch.Tensor:
        return x.unflatten(-1, (num_heads, self.head_dim)).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        ctx: ForwardContext,
        cache: Phi4FlashCache | None,
        shared_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        keep_last: int = 0,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Returns the mixer output (only the last ``keep_last`` positions when > 0) and the K,V attended over."""
        qkv = self.Wqkv(x)
        q_width = self.num_heads * self.head_dim
        if self.role == LayerRole.CROSS_ATTN:
            q = self._heads(qkv, self.num_heads)
            k, v = shared_kv
        else:
            kv_width = self.num_kv_heads * self.head_dim
            q, k, v = qkv.split([q_width, kv_width, kv_width], dim=-1)
            q = self._heads(q, self.num_heads)
            k, v = self._heads(k, self.num_kv_heads), self._heads(v, self.num_kv_heads)
            if self.rope_theta is not None:
                q = apply_rope(q, ctx.positions, self.rope_theta)
                k = apply_rope(k, ctx.positions, self.rope_theta)
            if cache is not None:
                k, v = cache.update_kv(self.layer_idx, k, v, self.window)
        if keep_last:
            q = q[:, :, -keep_last:]
        if q.shape[2] == 1:
            o = self._attend_last_query(q, k, v, ctx)
        else:
            attn_kwargs = dict(causal=True, window=self.window, doc_ids=ctx.key_doc_ids(k.shape[2]),
                               scale=self.softmax_scale, backend=ctx.backend, masks=ctx.masks)
            if self.inner_cross_attn is not None:
                o = self.inner_cross_attn(q, k, v, **attn_kwargs)
            else:
                o = ops.attention(q, k, v, **attn_kwargs).transpose(1, 2).flatten(2)
        return self.out_proj(o), (k, v)

    def _attend_last_query(self, q, k, v, ctx: ForwardContext) -> torch.Tensor:
        """One query at the last position (a decode step, or the linear prefill's last position): no causal mask,
        the window is a slice of the keys, and K,V are read in place from the cache (``decode_attention``)."""
        if self.window is not None and k.shape[2] > self.window:
            k, v = k[:, :, -self.window:], v[:, :, -self.window:]
        visible = ctx.last_query_visible(k.shape[2])
        if self.inner_cross_attn is not None:
            return self.inner_cross_attn.forward_last_query(q, k, v, self.softmax_scale, visible)
        (o,) = last_query_attention(q, k, (v,), self.softmax_scale, visible)
        return o.transpose(1, 2).flatten(2)


class Phi4FlashMLP(nn.Module):
    """SwiGLU with a fused first projection: ``fc1`` -> [gate | up], ``fc2(silu(gate) * up)``
    (docs/architecture.md §3)."""

    def __init__(self, config: Phi4FlashConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.fc2 = OutProj(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * up)


# --------------------------------------------------------------------------------------------------------------------
# Decoder layer and backbone
# --------------------------------------------------------------------------------------------------------------------
class Phi4FlashDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block ``h = x + mixer(LN1(x)); out = h + MLP(LN2(h))``; the mixer is chosen by the layer's role."""

    def __init__(self, config: Phi4FlashConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.role = config.layer_role(layer_idx)
        # In SambaY, the full-attention layer's K,V are shared with the cross-decoder and its output is the first
        # place where the linear prefill may drop positions.
        self.is_shared_kv_layer = config.backbone == "sambay" and self.role == LayerRole.FULL_ATTN
        self.input_layernorm = block_norm(config)
        if self.role.is_mamba:
            self.attn = Phi4FlashMamba(config, layer_idx, exports_memory=self.role == LayerRole.MEMORY_MAMBA)
        elif self.role == LayerRole.GMU:
            self.attn = Phi4FlashGMU(config)
        else:
            self.attn = Phi4FlashAttention(config, layer_idx, self.role)
        self.post_attention_layernorm = block_norm(config)
        self.mlp = Phi4FlashMLP(config)
        self.residual_multiplier = config.residual_multiplier

    def forward(
        self,
        hidden: torch.Tensor,
        memory: torch.Tensor | None,
        shared_k: torch.Tensor | None,
        shared_v: torch.Tensor | None,
        *,
        ctx: ForwardContext,
        past_key_values: Phi4FlashCache | None = None,
    ):
        """hidden: residual stream (fp32 or wider). Returns (hidden, memory, shared_k, shared_v)."""
        dtype = self.input_layernorm.weight.dtype
        x = self.input_layernorm(hidden.to(dtype))
        if self.role.is_mamba:
            out, new_memory = self.attn(x, ctx, past_key_values)
            if new_memory is not None:
                memory = new_memory
        elif self.role == LayerRole.GMU:
            out = self.attn(x, memory)
        elif self.role == LayerRole.CROSS_ATTN:
            out, _ = self.attn(x, ctx, past_key_values, shared_kv=(shared_k, shared_v))
        else:
            keep = ctx.keep_last if self.is_shared_kv_layer else 0
            out, (k, v) = self.attn(x, ctx, past_key_values, keep_last=keep)
            if self.is_shared_kv_layer:
                shared_k, shared_v = k, v
                if keep:
                    hidden = hidden[:, -keep:]
                    memory = memory[:, -keep:] if memory is not None else None
        r = self.residual_multiplier
        hidden = hidden + r * out.to(hidden.dtype)
        hidden = hidden + r * self.mlp(self.post_attention_layernorm(hidden.to(dtype))).to(hidden.dtype)
        return hidden, memory, shared_k, shared_v


class Phi4FlashPreTrainedModel(PreTrainedModel):
    config_class = Phi4FlashConfig
    config: Phi4FlashConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Phi4FlashDecoderLayer"]
    # Glob patterns over parameter names (from_pretrained(dtype=bf16/fp16) keeps these fp32).
    _keep_in_fp32_modules_strict = ["attn.A_log", "attn.D", "inner_cross_attn.lambda_*"]

    def _init_weights(self, module: nn.Module) -> None:
        """SP init (docs/architecture.md §13): N(0, initializer_range) for Linear/Embedding, residual output
        projections divided by sqrt(2 * num_layers), biases 0, Mamba A_log = log(1..N), D = 1, dt bias =
        softplus^-1(log-uniform dt), lambdas N(0, 0.1^2), norms 1/0. ``transformers.initialization`` skips
        already loaded tensors."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            scale = math.sqrt(2 * self.config.num_hidden_layers) if isinstance(module, OutProj) else 1.0
            init.normal_(module.weight, mean=0.0, std=std / scale)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.Conv1d):
            # PyTorch's default Conv1d init, as the reference keeps it.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1] * module.weight.shape[2])
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        if isinstance(module, Phi4FlashMamba):
            n = module.d_state
            a = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(module.A_log.shape[0], 1)
            init.copy_(module.A_log, a.to(module.A_log.device, module.A_log.dtype))
            init.ones_(module.D)
            # dt ~ log-uniform in [1e-3, 0.1], floored at 1e-4; the bias is its softplus inverse.
            dt_min, dt_max = 1e-3, 0.1
            u = torch.rand(module.dt_proj.bias.shape, dtype=torch.float32)
            dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
            inv_dt = dt + torch.log(-torch.expm1(-dt))
            init.copy_(module.dt_proj.bias, inv_dt.to(module.dt_proj.bias.device, module.dt_proj.bias.dtype))
        elif isinstance(module, DiffAttentionCore):
            for p in (module.lambda_q1, module.lambda_k1, module.lambda_q2, module.lambda_k2):
                init.normal_(p, mean=0.0, std=0.1)


class Phi4FlashModel(Phi4FlashPreTrainedModel):
    """The backbone: embeddings, decoder layers, final LayerNorm."""

    def __init__(self, config: Phi4FlashConfig):
        super().__init__(config)
        pad = config.pad_token_id
        padding_idx = pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=padding_idx)
        self.layers = nn.ModuleList(Phi4FlashDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layernorm = block_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Phi4FlashCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        doc_ids: torch.LongTensor | None = None,
        keep_last_positions: int = 0,
        cache: Phi4FlashCache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """``keep_last_positions`` > 0: return hidden states for the last that many positions only; SambaY then runs
        its cross-decoder on those positions only (linear prefill). The cache may come as ``cache`` (transformers
        >= 5.24), ``past_key_values`` or ``cache_params``. Unknown kwargs (e.g. a trainer's ``logits_to_keep``) are
        ignored, like other Hugging Face backbones do."""
        past_key_values = pick_cache(cache=cache, past_key_values=past_key_values,
                                     cache_params=kwargs.pop("cache_params", None))
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if use_cache is None:  # a training step has no use for a cache
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and past_key_values is None:
            past_key_values = Phi4FlashCache(self.config)
        if not use_cache:
            past_key_values = None
        if past_key_values is not None and not isinstance(past_key_values, Phi4FlashCache):
            raise TypeError(f"past_key_values must be a Phi4FlashCache, got {type(past_key_values).__name__}")
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        keep_last = keep_last_positions if 0 < keep_last_positions < length else 0
        # The Transformer++ baseline needs every position in every layer (each layer's K,V depend on them).
        keep_last_layers = 0 if self.config.backbone == "transformer" else keep_last
        ctx = build_forward_context(
            batch=batch, length=length, past=past, device=inputs_embeds.device, attention_mask=attention_mask,
            position_ids=position_ids, doc_ids=doc_ids, keep_last=keep_last_layers, cache=past_key_values,
            backend=self.config.compute_backend)

        hidden = inputs_embeds.to(residual_dtype(inputs_embeds.dtype))
        memory = shared_k = shared_v = None
        for layer in self.layers:
            hidden, memory, shared_k, shared_v = layer(
                hidden, memory, shared_k, shared_v, ctx=ctx, past_key_values=past_key_values)
        if keep_last and hidden.shape[1] != keep_last:
            hidden = hidden[:, -keep_last:]
        hidden = self.final_layernorm(hidden.to(self.final_layernorm.weight.dtype))
        if past_key_values is not None:
            past_key_values.advance(length)
        return BaseModelOutputWithPast(last_hidden_state=hidden, **{CACHE_FIELD: past_key_values})


class Phi4FlashForCausalLM(Phi4FlashPreTrainedModel, GenerationMixin):
    """SambaY causal LM with a tied LM head (no ``lm_head.weight`` in checkpoints when tied)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: Phi4FlashConfig):
        super().__init__(config)
        self.model = Phi4FlashModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits; muP++ scales them by ``logits_multiplier`` (1.0 in the standard parametrisation)."""
        logits = self.lm_head(hidden)
        m = self.config.logits_multiplier
        return logits if m == 1.0 else logits * m

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs) -> None:
        """generate() builds a Phi4FlashCache (a DynamicCache cannot hold Mamba states), under the installed
        transformers' cache name."""
        if cache_in(model_kwargs) is not None or generation_config.use_cache is False:
            return
        if generation_config.cache_implementation is not None:
            raise ValueError(
                f"cache_implementation={generation_config.cache_implementation!r} is unsupported: "
                "Phi4Flash always uses Phi4FlashCache")
        model_kwargs[CACHE_FIELD] = Phi4FlashCache(self.config)

    def prepare_inputs_for_generation(self, *args, **kwargs) -> dict:
        """The stock preparation, plus a check on the prompt's padding before the first forward of a generation
        (every later step only appends real tokens to the mask)."""
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        mask, cache = inputs.get("attention_mask"), cache_in(inputs)
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and (cache is None or cache.get_seq_length() == 0):
            check_left_padded(mask)
        return inputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Phi4FlashCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        doc_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        cache: Phi4FlashCache | None = None,
        return_logits: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Hugging Face causal-LM forward. ``labels`` are shifted inside (``IGNORE_INDEX`` ignored); the loss is the
        fp32 token cross-entropy summed and divided by ``num_items_in_batch`` when given, else averaged over targets,
        computed in vocabulary tiles from the hidden states (``lm_head_loss``, GEMMs at ``config.lm_head_precision``,
        log-sum-exp and loss in fp32) so no ``[B, T, vocab]`` tensor
        exists. With ``labels`` the output has logits only where asked: ``logits_to_keep`` positions (int > 0: the
        last that many; a tensor: those indices) or all of them with ``return_logits=True``; otherwise ``logits`` is
        None. Without ``labels`` logits come as usual (all positions, or ``logits_to_keep``). The cache may come as
        ``cache`` (what generate() passes from transformers 5.24 on), ``past_key_values`` or ``cache_params``; the
        output carries it under the installed transformers' field name."""
        past_key_values = pick_cache(cache=cache, past_key_values=past_key_values,
                                     cache_params=kwargs.pop("cache_params", None))
        # The backbone may drop positions (linear prefill) only when no loss needs them.
        backbone_keep = logits_to_keep if labels is None and isinstance(logits_to_keep, int) else 0
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache, doc_ids=doc_ids,
            keep_last_positions=backbone_keep,
        )
        hidden = outputs.last_hidden_state
        loss = None
        logits = None
        if labels is not None:
            loss = chunked_causal_lm_loss(hidden, self.lm_head.weight, labels, self.config.logits_multiplier,
                                          num_items_in_batch, self.config.lm_head_precision)
        if isinstance(logits_to_keep, torch.Tensor):
            logits = self._logits(hidden[:, logits_to_keep])
        elif logits_to_keep > 0:
            logits = self._logits(hidden[:, -logits_to_keep:])
        elif labels is None or return_logits:
            logits = self._logits(hidden)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})

