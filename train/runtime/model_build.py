"""Build a SambaY model for training: fresh from a :class:`ModelConfig` or from a Hugging Face export."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from data.inputs import require_input
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
from train.config import ModelConfig

# Keys of ModelConfig that are trainer options, not Phi4FlashConfig keys.
_TRAINER_KEYS = ("pad_vocab_to_multiple_of", "gradient_checkpointing", "init_from")


def resolve_vocab_size(cfg: ModelConfig, tokenizer_vocab: int | None) -> int:
    """``model.vocab_size`` when set, else the tokenizer's vocabulary rounded up to ``pad_vocab_to_multiple_of``."""
    if cfg.vocab_size is not None:
        return cfg.vocab_size
    if tokenizer_vocab is None:
        raise ValueError("model.vocab_size is null and no data manifest gives the tokenizer's vocabulary size")
    m = max(1, cfg.pad_vocab_to_multiple_of)
    return int(math.ceil(tokenizer_vocab / m) * m)


def mup_multipliers(cfg: ModelConfig, mup) -> dict[str, float]:
    """Model-side muP++ multipliers (docs/architecture.md §14): residual 1/sqrt(2L), logits d0/L, attention
    sqrt(hd0)/hd."""
    depth = cfg.num_hidden_layers
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return {"residual_multiplier": 1.0 / math.sqrt(2 * depth),
            "logits_multiplier": mup.base_depth / depth,
            "attention_multiplier": math.sqrt(mup.base_head_dim) / head_dim}


def hf_config(cfg: ModelConfig, *, vocab_size: int, eos_token_id: int | None, mup=None) -> Phi4FlashConfig:
    """A ``Phi4FlashConfig`` from the recipe's model section and the tokenizer's special ids; with an enabled
    ``MupConfig`` the model also gets the muP++ multipliers."""
    kwargs = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _TRAINER_KEYS}
    if mup is not None and mup.enabled:
        kwargs.update(mup_multipliers(cfg, mup))
    kwargs["vocab_size"] = vocab_size
    if eos_token_id is not None:
        # Like Phi-4-mini-flash: <|endoftext|> is BOS, EOS and padding; the generation config adds <|end|>.
        kwargs.update(bos_token_id=eos_token_id, pad_token_id=eos_token_id, eos_token_id=eos_token_id)
    return Phi4FlashConfig(**kwargs)


def meta_model(config: Phi4FlashConfig) -> torch.nn.Module:
    """Shapes only, no memory: what a dry run needs to count parameters, groups and FLOPs of any size."""
    with torch.device("meta"):
        return Phi4FlashForCausalLM(config)


def build_fresh(config: Phi4FlashConfig, device: torch.device | str, seed: int) -> torch.nn.Module:
    """A randomly initialised ``Phi4FlashForCausalLM`` on ``device`` (``meta`` builds shapes only)."""
    if torch.device(device).type == "meta":
        return meta_model(config)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Phi4FlashForCausalLM(config)
    return model.float()


def require_export(path: str | Path, key: str = "init_from",
                   remedy: str = "expected a Hugging Face export dir such as a stage's export/") -> Path:
    """``path`` as a Path when it is a Hugging Face export dir (``config.json``), else an error naming ``key``."""
    return require_input(path, key, remedy, marker="config.json", what="a model export")


def load_export(path: str | Path, compute_backend: str | None = None) -> torch.nn.Module:
    """Load an export (``save_pretrained`` layout) or a published hub snapshot (bf16, sharded with an index; its
    ``auto_map`` ignored: ``sambay_model`` is the model code) in fp32, the dtype of training's master weights."""
    path = require_export(path)
    extra = {} if compute_backend is None else {"compute_backend": compute_backend}
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True, **extra)


@dataclass(frozen=True)
class ModelBuilder:
    """How a run gets its model, for any device: ``build(device)`` / ``builder(device)``.

    ``config`` is the architecture (read from the export's ``config.json`` when ``init_from`` is set); on the
    meta device it gives the shapes without reading weights, elsewhere the model is a fresh init seeded with
    ``seed`` or the export's weights.
    """

    config: Phi4FlashConfig
    init_from: Path | None = None
    compute_backend: str | None = None
    seed: int = 0

    @classmethod
    def from_export(cls, path: str | Path, compute_backend: str | None = None) -> "ModelBuilder":
        path = require_export(path)
        return cls(Phi4FlashConfig.from_pretrained(str(path)), init_from=path, compute_backend=compute_backend)

    def __call__(self, device: torch.device | str) -> torch.nn.Module:
        if torch.device(device).type == "meta" or self.init_from is None:
            return build_fresh(self.config, device, self.seed)
        return load_export(self.init_from, self.compute_backend).to(device)
