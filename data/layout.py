"""The layout of a prepared data directory (what ``python -m data.prepare`` writes), in one place.

Every stage that reads prepared data names its files through :class:`PreparedData` instead of joining path
strings, so the layout (documented in ``docs/design.md``, "Prepared data") lives only here::

    <root>/DONE                      summary of the run that completed the directory
    <root>/tokenizer/                Hugging Face tokenizer (tokenizer.json, generation_config.json, ...)
    <root>/pretrain/                 pretraining shard set (train / val splits)
    <root>/<extra_pretrain name>/    further pretraining shard sets
    <root>/reasoning/{train,heldout}.jsonl
    <root>/sft/<stage>.jsonl         chat records of one SFT stage, and <root>/sft/<stage>/ its shard set
    <root>/preference/{train,heldout}.jsonl
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Where ``data.prepare`` writes and the other stages read when no ``data_dir`` / ``out_dir`` is given.
DEFAULT_DATA_DIR = "artifacts/data/demo"
# Top-level names a further pretraining set (``extra_pretrain[].name``) may not take.
RESERVED_NAMES = ("tokenizer", "pretrain", "reasoning", "sft", "preference")


@dataclass(frozen=True)
class PreparedData:
    """Paths inside one prepared data directory; building one touches no file."""

    root: Path

    def __init__(self, root: str | Path = DEFAULT_DATA_DIR):
        object.__setattr__(self, "root", Path(root))

    @property
    def done(self) -> Path:
        return self.root / "DONE"

    @property
    def lock(self) -> Path:
        """Held by the one ``data.prepare`` writing the directory (``data.dir_lock.RunLock``)."""
        return self.root / "prepare.lock"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def pretrain(self) -> Path:
        return self.root / "pretrain"

    def shard_set(self, name: str) -> Path:
        """A top-level pretraining shard set: ``pretrain`` or an ``extra_pretrain`` name."""
        return self.root / name

    def reasoning(self, split: str) -> Path:
        return self.root / "reasoning" / f"{split}.jsonl"

    def sft_jsonl(self, stage: str) -> Path:
        return self.root / "sft" / f"{stage}.jsonl"

    def sft_shards(self, stage: str) -> Path:
        return self.root / "sft" / stage

    def preference(self, split: str) -> Path:
        return self.root / "preference" / f"{split}.jsonl"
