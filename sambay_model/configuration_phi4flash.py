"""Phi4FlashConfig: the official Phi-4-mini-flash config keys (docs/architecture.md §10) plus SambaY variant
switches. Its field defaults are the one place the official architecture is written: the training schema
(``train.config.ModelConfig``) takes its defaults from them and ``recipes/model/phi4_mini_flash.yaml`` sets none."""
from __future__ import annotations

import math
from enum import Enum

from transformers import PretrainedConfig

from .lm_head_loss import HEAD_PRECISIONS
from .ops.backend import BACKENDS as COMPUTE_BACKENDS

BACKBONES = ("sambay", "transformer")
# Keys of the official config.json that this implementation drops: ``auto_map`` points at the remote code this
# package replaces, ``_attn_implementation`` names flash_attention_2, which this model does not dispatch through.
DROPPED_KEYS = ("auto_map", "_attn_implementation", "attn_implementation")
# Keys that choose how the model runs, not what it computes: a run may set them (SFT's ``compute_backend``, TRL's
# ``use_cache=False`` while training) on a model whose exported config.json still holds the published values.
RUNTIME_KEYS = ("use_cache", "compute_backend", "lm_head_precision")
# A key only this package writes into config.json (``save_pretrained`` writes every field): absent, the file came
# from the published remote code (train.runtime.export keeps that layout).
SAMBAY_MARKER_KEY = "backbone"


class LayerRole(str, Enum):
    """What a layer is in SambaY (docs/architecture.md §1; :meth:`Phi4FlashConfig.layer_role` assigns them).

    A str-valued enum: a role equals, hashes and prints as its value (``LayerRole.SWA == "swa"``), so code and
    files that hold the plain names keep working.
    """

    MAMBA = "mamba"  # Mamba-1 mixer of the self-decoder
    SWA = "swa"  # sliding-window causal self-attention
    MEMORY_MAMBA = "memory_mamba"  # Mamba-1 whose pre-gate scan output is the GMU memory (layer L/2)
    FULL_ATTN = "full_attn"  # full causal self-attention; in SambaY its K,V are the shared KV (layer L/2+1)
    GMU = "gmu"  # Gated Memory Unit reading the memory
    CROSS_ATTN = "cross_attn"  # own queries over the shared K,V

    # str() and f-strings give the value, as they would for the plain name (Enum's own is "LayerRole.SWA").
    __str__ = str.__str__

    @property
    def is_mamba(self) -> bool:
        """Whether the layer's mixer is a Mamba (with its conv and SSM state)."""
        return self in (LayerRole.MAMBA, LayerRole.MEMORY_MAMBA)


# The official ``layers_block_type`` label of each layer role (the official code implements the GMU inside its Mamba
# class, hence "mamba").
OFFICIAL_BLOCK_LABELS = {LayerRole.MAMBA: "mamba", LayerRole.MEMORY_MAMBA: "mamba", LayerRole.GMU: "mamba",
                         LayerRole.SWA: "attention", LayerRole.FULL_ATTN: "attention",
                         LayerRole.CROSS_ATTN: "shared_attention"}
# The released checkpoint's special-token ids (``<|endoftext|>`` is BOS, EOS and padding). They belong to its
# tokenizer, not to the architecture: training sets them from its own tokenizer.
RELEASED_TOKEN_IDS = {"bos_token_id": 199999, "eos_token_id": 199999, "pad_token_id": 199999}


class Phi4FlashConfig(PretrainedConfig):
    """Configuration of a SambaY (decoder-hybrid-decoder) causal LM.

    Every default is that of the released microsoft/Phi-4-mini-flash-reasoning (its ``config.json``; keys it does
    not set take the official class's defaults), so ``Phi4FlashConfig()`` is the official 3.85B architecture:

    - ``vocab_size=200064`` (o200k-based tokenizer, padded), ``hidden_size=2560``, ``intermediate_size=10240``
      (SwiGLU width; fc1 outputs twice that), ``num_hidden_layers=32`` (must be divisible by 4),
      ``num_attention_heads=40``, ``num_key_value_heads=20`` (None means MHA),
    - ``sliding_window=512``: window (tokens incl. self) of the self-decoder attention layers. Stored, like the
      official class, as a per-layer list (the window for odd layers below L/2, else None); a list is accepted
      as-is so that saved configs round-trip,
    - ``max_position_embeddings=262144`` (informational: NoPE), ``mb_per_layer=2`` (every other layer is a
      Mamba/GMU layer; only 2 is supported), ``hidden_act="silu"`` (SwiGLU gate), ``layer_norm_eps=1e-5``,
      ``initializer_range=0.02``, ``resid_pdrop=0.0``, ``embd_pdrop=0.0``, ``attention_dropout=0.0`` (kept for
      compatibility; no dropout is applied, like the official model at pdrop 0), ``use_cache=True``,
      ``tie_word_embeddings=True``, ``rope_theta=10000.0`` (used only by ``backbone="transformer"``),
    - ``mamba_d_state=16``, ``mamba_d_conv=4``, ``mamba_expand=2``, ``mamba_dt_rank="auto"`` (ceil(hidden/16)),
      ``mamba_conv_bias=True``, ``mamba_proj_bias=False``,
    - ``bos_token_id=None``, ``eos_token_id=None``, ``pad_token_id=None`` (the embedding's padding row when set, as
      in the official model): the tokenizer's ids, see :data:`RELEASED_TOKEN_IDS` and
      :meth:`phi4_mini_flash_reasoning`.

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
    - ``lm_head_precision="tf32"``: how the LM head's GEMMs run on CUDA (``sambay_model.lm_head_loss``; the
      log-sum-exp, the loss and the gradient accumulation are fp32 in every mode, and other devices always run
      the head in fp32): ``"fp32"`` IEEE fp32 GEMMs (~60 TFLOP/s on an H100), ``"tf32"`` the same tensors on the
      tensor cores with operands rounded to a 10-bit mantissa (~495 TFLOP/s), ``"bf16"`` bf16 operands and fp32
      accumulation with the logits tile stored in bf16 (~990 TFLOP/s). tf32 is the default because it keeps fp32
      logits and range at 8x the fp32 rate, with operand rounding 2**-11: at a 200,064 vocabulary the loss moves
      by ~1e-4 and the gradients by ~3e-4 relative against fp32 (``tests/sambay_model/test_lm_head_precision.py``),
      about 10x less than bf16; and bf16 logits are the "bf16 head" with which the published Phi-4-mini-flash
      recipe saw growing gradient-norm spikes (it trains with an fp32 head). bf16 halves the head's time again.
    - muP++ multipliers (docs/architecture.md §14; the defaults are the standard parametrisation of the official
      model): ``residual_multiplier=1.0`` scales every mixer and MLP branch before it joins the residual stream,
      ``logits_multiplier=1.0`` scales the LM-head logits, ``attention_multiplier=None`` is the softmax scale
      (None: 1/sqrt(head_dim)).

    Transformers makes every annotated field below a dataclass field with this default; keys it does not know
    (e.g. the released ``mlp_bias``) are kept as plain attributes.
    """

    model_type = "phi4flash"
    keys_to_ignore_at_inference = ["past_key_values"]
    # trl reads config.auto_map when it reloads a reference model; our classes are registered locally.
    auto_map = {}
    # TRL's fused LM head (DPOTrainer's log-probs) reads the logits multiplier as ``lm_head_multiplier`` (Falcon-H1's
    # name, same meaning: logits are multiplied by it); without this alias DPO on a muP++ model scores another model.
    attribute_map = {"lm_head_multiplier": "logits_multiplier"}

    vocab_size: int = 200064
    hidden_size: int = 2560
    intermediate_size: int = 10240
    num_hidden_layers: int = 32
    num_attention_heads: int = 40
    num_key_value_heads: int | None = 20
    sliding_window: int | list[int | None] | None = 512
    max_position_embeddings: int = 262144
    mb_per_layer: int = 2
    hidden_act: str = "silu"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attention_dropout: float = 0.0
    use_cache: bool = True
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int | str = "auto"
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    use_diff_attn: bool | None = None
    use_gmu: bool = True
    backbone: str = "sambay"
    compute_backend: str = "auto"
    lm_head_precision: str = "tf32"
    residual_multiplier: float = 1.0
    logits_multiplier: float = 1.0
    attention_multiplier: float | None = None

    def __post_init__(self, **kwargs):
        for key in DROPPED_KEYS:
            kwargs.pop(key, None)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if isinstance(self.sliding_window, (list, tuple)):
            self.sliding_window = list(self.sliding_window)
        else:
            half = self.num_hidden_layers // 2
            self.sliding_window = [self.sliding_window if i < half and i % 2 == 1 else None
                                   for i in range(self.num_hidden_layers)]
        if self.mamba_dt_rank == "auto":
            self.mamba_dt_rank = math.ceil(self.hidden_size / 16)
        self.mamba_dt_rank = int(self.mamba_dt_rank)
        if self.use_diff_attn is None:
            self.use_diff_attn = self.backbone != "transformer"
        self.use_diff_attn = bool(self.use_diff_attn)
        self.residual_multiplier = float(self.residual_multiplier)
        self.logits_multiplier = float(self.logits_multiplier)
        if self.attention_multiplier is not None:
            self.attention_multiplier = float(self.attention_multiplier)
        super().__post_init__(**kwargs)
        self.validate_sambay()

    def validate_sambay(self) -> None:
        """Raise a ValueError naming the offending key when the architecture cannot be built."""

        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"Phi4FlashConfig: invalid `{key}`={getattr(self, key)!r}: {why}")

        if self.backbone not in BACKBONES:
            raise bad("backbone", f"expected one of {BACKBONES}")
        if self.compute_backend not in COMPUTE_BACKENDS:
            raise bad("compute_backend", f"expected one of {COMPUTE_BACKENDS}")
        if self.lm_head_precision not in HEAD_PRECISIONS:
            raise bad("lm_head_precision", f"expected one of {HEAD_PRECISIONS}")
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

    def layer_role(self, i: int) -> LayerRole:
        """SambaY role of layer ``i`` (docs/architecture.md §1), the project's one table of layer roles: below L/2
        ``MAMBA`` (even) and ``SWA`` (odd); at L/2 ``MEMORY_MAMBA`` (its scan output is the GMU memory); at L/2+1
        ``FULL_ATTN`` (its K,V serve every cross-attention layer); above, ``GMU`` (even; ``CROSS_ATTN`` without
        GMU) and ``CROSS_ATTN`` (odd). Every layer of the Transformer++ baseline is ``FULL_ATTN``."""
        half = self.num_hidden_layers // 2
        if self.backbone == "transformer":
            return LayerRole.FULL_ATTN
        if i < half:
            return LayerRole.MAMBA if i % 2 == 0 else LayerRole.SWA
        if i == half:
            return LayerRole.MEMORY_MAMBA
        if i == half + 1:
            return LayerRole.FULL_ATTN
        return LayerRole.GMU if i % 2 == 0 and self.use_gmu else LayerRole.CROSS_ATTN

    @property
    def layers_block_type(self) -> list[str]:
        """The official labels of :meth:`layer_role`: 'mamba' (incl. GMU), 'attention', 'shared_attention'."""
        return [OFFICIAL_BLOCK_LABELS[self.layer_role(i)] for i in range(self.num_hidden_layers)]

    @classmethod
    def phi4_mini_flash_reasoning(cls, **overrides) -> "Phi4FlashConfig":
        """The exact config of microsoft/Phi-4-mini-flash-reasoning: the class defaults plus the released
        tokenizer's special-token ids and the metadata keys of its config.json."""
        values = dict(**RELEASED_TOKEN_IDS, mlp_bias=False, lm_head_bias=False,
                      architectures=["Phi4FlashForCausalLM"], dtype="bfloat16")
        values.update(overrides)
        return cls(**values)
