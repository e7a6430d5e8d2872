"""Check a run's data mixture before anything is built: every source a prepared shard set of the right kind,
tokenized with the run's tokenizer and within the model's vocabulary. Shared by pretraining and SFT, for real
runs and dry runs alike (a missing shard set is always an error naming its path)."""
from __future__ import annotations

from pathlib import Path

from data.inputs import require_input
from data.layout import PreparedData
from data.shards import MANIFEST, IncompatibleShardsError, check_compatible, read_manifest
from train.config import DataConfig, DataSource


def check_sources(sources: list[DataSource], where: str, tokenizer_dir: Path | None, vocab_size: int | None,
                  kind: str | None = None) -> list[dict]:
    """``[{"path", "weight", "manifest"}]`` of ``sources`` (named ``where[i].path`` in errors).

    ``tokenizer_dir`` None: no tokenizer to compare with yet (an SFT dry run before pretraining exported one), so
    the sources must at least share one tokenizer. ``vocab_size`` None skips the vocabulary check.
    """
    if not sources:
        raise ValueError(f"{where} is empty: the recipe must list at least one shard set")
    out = []
    for i, src in enumerate(sources):
        at = f"{where}[{i}].path={src.path}"
        _require_shards(src.path, f"{where}[{i}].path")
        try:
            manifest = check_compatible(src.path, tokenizer_dir, vocab_size)
        except IncompatibleShardsError as e:
            raise IncompatibleShardsError(f"{at}: {e}") from None
        if kind is not None and manifest["kind"] != kind:
            raise IncompatibleShardsError(f"{at}: shard set kind is {manifest['kind']!r}; this stage needs {kind!r}")
        fingerprints = {m["manifest"]["tokenizer"]["fingerprint"] for m in out} | {manifest["tokenizer"]["fingerprint"]}
        if tokenizer_dir is None and len(fingerprints) > 1:
            raise IncompatibleShardsError(f"{at}: tokenized with another tokenizer than {where}[0]")
        out.append({"path": str(src.path), "weight": src.weight, "manifest": manifest})
    return out


def _require_shards(path: str | Path, key: str) -> Path:
    return require_input(path, key, marker=MANIFEST, what="a shard set")


def first_manifest(data: DataConfig, where: str = "data.sources") -> dict:
    """The manifest of the mixture's first source (its tokenizer sizes the model); missing: an error naming it."""
    if not data.sources:
        raise ValueError(f"{where} is empty: the recipe must list at least one shard set")
    return read_manifest(_require_shards(data.sources[0].path, f"{where}[0].path"))


def resolve_tokenizer_dir(data: DataConfig, manifest: dict) -> Path | None:
    """``data.tokenizer``, else the prepared directory's tokenizer beside the first source (the data.prepare
    layout), else the tokenizer path the manifest recorded."""
    if data.tokenizer:
        return Path(data.tokenizer)
    beside = PreparedData(Path(data.sources[0].path).parent).tokenizer
    if (beside / "tokenizer.json").is_file():
        return beside
    recorded = manifest["tokenizer"].get("path")
    return Path(recorded) if recorded else None
