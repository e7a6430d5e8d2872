"""Structured (dataclass) schema of ``python -m data.prepare`` recipes (``recipes/prepare/``).

Registered with Hydra's ConfigStore as ``prepare_schema``; recipes list it first in their defaults, so an
override of a key that is not declared here is an error naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from data.layout import DEFAULT_DATA_DIR


@dataclass
class TokenizerConfig:
    """Which tokenizer the data is made with.

    kind: ``bpe`` trains a byte-level BPE on the corpus; ``phi4mini`` builds the o200k-based Phi-4-mini
        tokenizer (vocab 200,064) offline; ``path`` copies the tokenizer files of a local HF tokenizer directory or
        model snapshot (``data.tokenizer.TOKENIZER_FILES``: ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``,
        ``tokenizer_config.json``, ...; never its weights), so the data's tokenizer fingerprint is the
        checkpoint's (default ``bpe``).
    path: the local tokenizer directory or model snapshot for ``kind: path``; when ``out_dir`` already holds a copy
        of another tokenizer (the path changed), prepare refuses until ``overwrite=true`` (default ``None``).
    vocab_size: BPE vocabulary size (default 4096).
    train_chars: characters of corpus used to train the BPE; 0 = all (default 4,000,000).
    """

    kind: str = "bpe"
    path: Optional[str] = None
    vocab_size: int = 4096
    train_chars: int = 4_000_000


@dataclass
class CorpusConfig:
    """Pretraining text.

    files: local inputs, streamed (any size): ``.jsonl``/``.json`` (JSON Lines, also ``.gz``/``.zst``
        compressed), ``.parquet``, directories written by ``datasets``' ``save_to_disk`` (one document per
        row), ``.txt``/``.md``/``.rst`` (one document per file, also compressed); when non-empty they replace
        the Debian/stdlib corpus, and an interrupted preparation resumes (see ``data.pretrain_shards``) (default empty).
    text_field: JSONL/Parquet/datasets field holding the text (default ``text``).
    debian_packages: Debian documentation packages fetched with ``apt-get download`` (default
        ``[python3.11-doc]``; see ``data.corpus.DEBIAN_TEXT_GLOBS`` for the known ones).
    include_stdlib: add the Python standard library sources (also the fallback when apt fails) (default False).
    max_chars: cap on the corpus size in characters; 0 = no cap (default 0).
    cache_dir: where downloaded packages are unpacked (default ``artifacts/cache/corpus``).
    """

    files: list[str] = field(default_factory=list)
    text_field: str = "text"
    debian_packages: list[str] = field(default_factory=lambda: ["python3.11-doc"])
    include_stdlib: bool = False
    max_chars: int = 0
    cache_dir: str = "artifacts/cache/corpus"


@dataclass
class PretrainDataConfig:
    """The pretraining shard set ``<out_dir>/pretrain``.

    enabled: write it (default True).
    val_fraction: fraction of documents in the ``val`` split (default 0.02).
    shard_tokens: most tokens per shard file, i.e. the shard size bound: 2 bytes per token for vocabularies up
        to 65,536, else 4 (2**26 = 128 MiB / 256 MiB; 2**29 = 1 GiB with uint16). Only a single document
        longer than this makes a larger shard, since documents never straddle shards (default 2**26).
    """

    enabled: bool = True
    val_fraction: float = 0.02
    shard_tokens: int = 1 << 26


@dataclass
class ExtraPretrainConfig:
    """Another pretraining shard set ``<out_dir>/<name>`` (e.g. code next to prose, for a weighted mixture),
    made with the same tokenizer.

    name: directory name; not one of ``data.layout.RESERVED_NAMES`` (tokenizer, pretrain, reasoning, sft,
        preference) (default empty; must be set).
    corpus: its text (default: ``CorpusConfig()`` defaults).
    val_fraction: fraction of documents in ``val`` (default 0.02).
    """

    name: str = ""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    val_fraction: float = 0.02


@dataclass
class ReasoningConfig:
    """Problems written to ``<out_dir>/reasoning/{train,heldout}.jsonl``.

    source: ``procedural`` (``data.reasoning`` families) or ``gsm_symbolic`` (reasoning_gym) (default
        ``procedural``).
    n_train: problems from training templates (default 2000).
    n_heldout: problems from held-out templates (default 300).
    families: procedural families to use; empty = all (default empty).
    heldout_fraction: gsm_symbolic only: fraction of templates held out (default 0.2).
    """

    source: str = "procedural"
    n_train: int = 2000
    n_heldout: int = 300
    families: list[str] = field(default_factory=list)
    heldout_fraction: float = 0.2


@dataclass
class SFTStageData:
    """One SFT stage's data: ``<out_dir>/sft/<name>.jsonl`` and the shard set ``<out_dir>/sft/<name>/``.

    name: stage name (default ``MISSING``-like empty string; must be set).
    jsonl: a chat JSONL (``{"messages": [...]}``) to use instead of generated reasoning problems (default None).
    families: procedural families for generated problems; empty = all (default empty).
    n_examples: generated problems (train templates only) (default 2000).
    val_fraction: fraction of conversations in the ``val`` split (default 0.05).
    """

    name: str = ""
    jsonl: Optional[str] = None
    families: list[str] = field(default_factory=list)
    n_examples: int = 2000
    val_fraction: float = 0.05


@dataclass
class PreferenceDataConfig:
    """``<out_dir>/preference/{train,heldout}.jsonl`` (TRL conversational DPO format).

    enabled: write them (default True).
    n_train: pairs from training templates (default 1000).
    n_heldout: pairs from held-out templates (default 200).
    """

    enabled: bool = True
    n_train: int = 1000
    n_heldout: int = 200


@dataclass
class PrepareConfig:
    """Schema of ``data.prepare`` recipes.

    out_dir: output root (default ``data.layout.DEFAULT_DATA_DIR``, ``artifacts/data/demo``).
    overwrite: redo outputs that already exist (default False: complete outputs are skipped).
    dry_run: check the config and the inputs, print the plan (every output and whether it would be built,
        rebuilt or kept) as one JSON line ``{"dry_run": {...}}``, and write nothing (default False).
    seed: seeds splits and generated problems (default 0).
    num_proc: tokenization worker processes for pretraining shards; the shards are byte-identical for any
        value; 0 = one per available core; 1 tokenizes in-process with the tokenizers library's own threads
        (default 2).
    """

    out_dir: str = DEFAULT_DATA_DIR
    overwrite: bool = False
    dry_run: bool = False
    seed: int = 0
    num_proc: int = 2
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    pretrain: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    extra_pretrain: list[ExtraPretrainConfig] = field(default_factory=list)
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)
    sft: list[SFTStageData] = field(default_factory=list)
    preference: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)


def register_prepare_schema() -> None:
    """Register :class:`PrepareConfig` with Hydra's ConfigStore as ``prepare_schema`` (idempotent)."""
    ConfigStore.instance().store(name="prepare_schema", node=PrepareConfig)
