"""Phi4FlashConfig: the official Phi-4-mini-flash config keys (docs/architecture.md §10) plus SambaY variant
switches."""
from __future__ import annotations

import math

from transformers import PretrainedConfig

from .ops.backend import BACKENDS as COMPUTE_BACKENDS

BACKBONES = ("sambay", "transformer")


def resolve_diff_attn(use_diff_attn: bool | None, backbone: str) -> bool:
    """``use_diff_attn=None`` is the backbone's own choice: differential attention in SambaY (the official model),
    none in the Transformer++ baseline."""
    return backbone != "transformer" if use_diff_attn is None else bool(use_diff_attn)


class Phi4FlashConfig(PretrainedConfig):
    """Configuration of a SambaY (decoder-hybrid-decoder) causal LM.

    Official keys and class defaults (same as the official ``Phi4FlashConfig``; the released checkpoint overrides
    several of them, see :meth:`phi4_mini_flash_reasoning`):

    - ``vocab_size=51200``, ``hidden_size=2560``, ``intermediate_size=9216`` (SwiGLU width; fc1 outputs twice that),
      ``num_hidden_layers=32`` (must be divisible by 4), ``num_attention_heads=40``, ``num_key_value_heads=4``
      (None means MHA),
    - ``resid_pdrop=0.0``, ``embd_pdrop=0.0``, ``attention_dropout=0.0`` (kept for compatibility; this
      implementation applies no dropout, like the official model at pdrop 0),
    - ``hidden_act="silu"`` (SwiGLU gate), ``max_position_embeddings=4096`` (informational: NoPE),
      ``initializer_range=0.02``, ``layer_norm_eps=1e-5``, ``use_cache=True``, ``tie_word_embeddings=True``,
      ``rope_theta=10000.0`` (used only by ``backbone="transformer"``), ``bos_token_id=1``, ``eos_token_id=2``,
      ``pad_token_id=None`` (the embedding's padding row when set, as in the official model),
    - ``sliding_window=2047``: window (tokens incl. self) of the self-decoder attention layers. Stored, like the
      official class, as a per-layer list (the window for odd layers below L/2, else None); a list is accepted
      as-is so that saved configs round-trip,
    - ``mb_per_layer=2`` (every other layer is a Mamba/GMU layer; only 2 is supported),
    - ``mamba_d_state=16``, ``mamba_d_conv=4``, ``mamba_expand=2``, ``mamba_dt_rank="auto"``
      (ceil(hidden/16)), ``mamba_conv_bias=True``, ``mamba_proj_bias=False``.

    Additions (defaults reproduce the official model):

    - ``use_diff_attn=None``: differential attention in every attention layer; None means the backbone's own
      choice (True for SambaY, as in the official model; False for Transformer++, which has none: True with
      ``backbone="transformer"`` is an error),
    - ``use_gmu=True``: False turns every cross-decoder layer into cross-attention. That is the Samba+YOCO
      baseline, and it keeps every other choice of the SambaY it is compared with (LayerNorm with bias, NoPE,
      attention biases, ``use_diff_attn``, window): set the same keys, change only ``use_gmu``,
    - ``backbone="sambay"``: ``"transformer"`` builds the Transformer++ baseline as ArchScale defines it: every
      layer full causal GQA attention with RoPE (``rope_theta``; angles and rotation in fp32) and a SwiGLU MLP,
      RMSNorm (``layer_norm_eps``) for the block and final norms, no bias in any linear layer, no differential
      attention; same width, depth, heads and MLP width as the SambaY it is compared with,
    - ``compute_backend="auto"``: ``"torch"`` forces the pure-PyTorch ops, ``"triton"`` the Triton kernels (CUDA, or
      CPU under ``TRITON_INTERPRET=1``), ``"cuda"`` requires the CUDA kernel packages; ``"auto"`` is triton on
      CUDA when Triton imports, else cuda when its packages import, else torch.
    - muP++ multipliers (docs/architecture.md §14; the defaults are the standard parametrisation of the official
      model):
      ``residual_multiplier=1.0`` scales every mixer and MLP branch before it joins the residual stream,
      ``logits_multiplier=1.0`` scales the LM-head logits, ``attention_multiplier=None`` is the softmax scale
      (None: 1/sqrt(head_dim)).
    """

    model_type = "phi4flash"
    keys_to_ignore_at_inference = ["past_key_values"]
    # trl reads config.auto_map when it reloads a reference model; our classes are registered locally.
    auto_map = {}
    # TRL's fused LM head (DPOTrainer's log-probs) reads the logits multiplier as ``lm_head_multiplier`` (Falcon-H1's
    # name, same meaning: logits are multiplied by it); without this alias DPO on a muP++ model scores another model.
    attribute_map = {"lm_head_multiplier": "logits_multiplier"}

    def __init__(
        self,
        vocab_size: int = 51200,
        hidden_size: int = 2560,
        intermediate_size: int = 9216,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 40,
        num_key_value_heads: int | None = 4,
        resid_pdrop: float = 0.0,
        embd_pdrop: float = 0.0,
        attention_dropout: float = 0.0,
        hidden_act: str = "silu",
        max_position_embeddings: int = 4096,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-5,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        rope_theta: float = 10000.0,
        bos_token_id: int | None = 1,
        eos_token_id: int | list[int] | None = 2,
        pad_token_id: int | None = None,
        sliding_window: int | list[int | None] | None = 2047,
        mb_per_layer: int = 2,
        mamba_d_state: int = 16,
        mamba_d_conv: int = 4,
        mamba_expand: int = 2,
        mamba_dt_rank: int | str = "auto",
        mamba_conv_bias: bool = True,
        mamba_proj_bias: bool = False,
        use_diff_attn: bool | None = None,
        use_gmu: bool = True,
        backbone: str = "sambay",
        compute_backend: str = "auto",
        residual_multiplier: float = 1.0,
        logits_multiplier: float = 1.0,
        attention_multiplier: float | None = None,
        **kwargs,
    ):
        # The official config.json points auto_map at remote code that we replace, and names flash_attention_2,
        # which this model does not dispatch through: drop both so loading never reaches for either.
        kwargs.pop("auto_map", None)
        kwargs.pop("_attn_implementation", None)
        kwargs.pop("attn_implementation", None)
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attention_dropout = attention_dropout
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.use_cache = use_cache
        self.pad_token_id = pad_token_id
        self.rope_theta = rope_theta
        self.mb_per_layer = mb_per_layer
        if isinstance(sliding_window, (list, tuple)):
            self.sliding_window = list(sliding_window)
        else:
            self.sliding_window = [
                sliding_window if i < num_hidden_layers // 2 and i % 2 == 1 else None
                for i in range(num_hidden_layers)
            ]
        self.mamba_d_state = mamba_d_state
        self.mamba_d_conv = mamba_d_conv
        self.mamba_expand = mamba_expand
        self.mamba_dt_rank = math.ceil(hidden_size / 16) if mamba_dt_rank == "auto" else int(mamba_dt_rank)
        self.mamba_conv_bias = mamba_conv_bias
        self.mamba_proj_bias = mamba_proj_bias
        self.use_diff_attn = resolve_diff_attn(use_diff_attn, backbone)
        self.use_gmu = use_gmu
        self.backbone = backbone
        self.compute_backend = compute_backend
        self.residual_multiplier = float(residual_multiplier)
        self.logits_multiplier = float(logits_multiplier)
        self.attention_multiplier = None if attention_multiplier is None else float(attention_multiplier)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_sambay()

    def validate_sambay(self) -> None:
        """Raise a ValueError naming the offending key when the architecture cannot be built."""

        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"Phi4FlashConfig: invalid `{key}`={getattr(self, key)!r}: {why}")

        if self.backbone not in BACKBONES:
            raise bad("backbone", f"expected one of {BACKBONES}")
        if self.compute_backend not in COMPUTE_BACKENDS:
            raise bad("compute_backend", f"expected one of {COMPUTE_BACKENDS}")
        if self.num_hidden_layers % 4 != 0:
            raise bad("num_hidden_layers", "SambaY needs a multiple of 4")
        if self.mb_per_layer != 2:
            raise bad("mb_per_layer", "only 2 (alternating Mamba/attention) is implemented")
        if self.hidden_size % self.num_attention_heads != 0:
            raise bad("num_attention_heads", f"must divide hidden_size={self.hidden_size}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise bad("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
        if self.use_diff_attn and self.backbone == "transformer":
            raise bad("use_diff_attn", "the Transformer++ baseline has no differential attention")
        if self.use_diff_attn and self.num_key_value_heads % 2 != 0:
            raise bad("num_key_value_heads", "differential attention splits heads in pairs: must be even")
        if len(self.sliding_window) != self.num_hidden_layers:
            raise bad("sliding_window", f"a per-layer list needs num_hidden_layers={self.num_hidden_layers} entries")
        for w in self.sliding_window:
            if w is not None and (not isinstance(w, int) or w < 1):
                raise bad("sliding_window", "windows must be positive integers or None")
        if self.hidden_act != "silu":
            raise bad("hidden_act", "the SwiGLU MLP is defined with silu only")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mamba_d_inner(self) -> int:
        return self.mamba_expand * self.hidden_size

    @property
    def layers_block_type(self) -> list[str]:
        """The official labels: 'mamba' (even layers, incl. GMU), 'attention', 'shared_attention'."""
        half = self.num_hidden_layers // 2
        return [
            "mamba" if i % 2 == 0 else ("attention" if i <= half + 1 else "shared_attention")
            for i in range(self.num_hidden_layers)
        ]

    def layer_role(self, i: int) -> str:
        """SambaY role of layer ``i`` (docs/architecture.md §1): mamba, swa, memory_mamba, full_attn, gmu,
        cross_attn."""
        if self.backbone == "transformer":
            return "full_attn"
        half = self.num_hidden_layers // 2
        if i < half:
            return "mamba" if i % 2 == 0 else "swa"
        if i == half:
            return "memory_mamba"
        if i == half + 1:
            return "full_attn"
        if i % 2 == 0:
            return "gmu" if self.use_gmu else "cross_attn"
        return "cross_attn"

    @classmethod
    def phi4_mini_flash_reasoning(cls, **overrides) -> "Phi4FlashConfig":
        """The exact config of microsoft/Phi-4-mini-flash-reasoning (its config.json values)."""
        values = dict(
            vocab_size=200064,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=32,
            num_attention_heads=40,
            num_key_value_heads=20,
            mb_per_layer=2,
            sliding_window=512,
            max_position_embeddings=262144,
            hidden_act="silu",
            layer_norm_eps=1e-5,
            initializer_range=0.02,
            attention_dropout=0.0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            tie_word_embeddings=True,
            use_cache=True,
            bos_token_id=199999,
            eos_token_id=199999,
            pad_token_id=199999,
            mlp_bias=False,
            lm_head_bias=False,
            architectures=["Phi4FlashForCausalLM"],
            dtype="bfloat16",
        )
        values.update(overrides)
        return cls(**values)
