"""Weighted mixtures of shard sets as declared in recipes: ``sources: [{path: DIR, weight: W}, ...]``.

The loader realises the mixture (each row's source is a seeded weighted draw); this module turns the recipe
form into ``[(path, weight)]`` and checks it before a run starts, with errors naming the entry.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data.shards import read_manifest


def parse_sources(sources: Sequence[Any], kind: str | None = None) -> list[tuple[str, float]]:
    """``[{path, weight}]`` (dicts, DictConfigs, objects with ``.path``/``.weight`` or ``(path, weight)`` pairs)
    -> ``[(path, weight)]``.

    Checks: at least one entry; each path is a shard set; weights finite and >= 0 with a positive sum;
    every set has ``kind`` (when given) and all share one tokenizer fingerprint.
    """
    if not sources:
        raise ValueError("data sources: the mixture is empty; declare sources: [{path: DIR, weight: W}]")
    out: list[tuple[str, float]] = []
    fingerprints: dict[str, str] = {}
    for i, src in enumerate(sources):
        if isinstance(src, (str, Path)):
            path, weight = src, 1.0
        elif isinstance(src, Mapping):
            path, weight = src.get("path"), src.get("weight", 1.0)
        elif isinstance(src, (tuple, list)) and len(src) == 2:
            path, weight = src
        else:
            path, weight = getattr(src, "path", None), getattr(src, "weight", 1.0)
        if not path:
            raise ValueError(f"data sources[{i}]: missing 'path'")
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"data sources[{i}] ({path}): weight {weight!r} is not a number") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"data sources[{i}] ({path}): weight must be finite and >= 0, got {weight}")
        m = read_manifest(path)
        if kind is not None and m["kind"] != kind:
            raise ValueError(f"data sources[{i}] ({path}): shard set kind is {m['kind']!r}, expected {kind!r}")
        fingerprints[str(path)] = m["tokenizer"]["fingerprint"]
        out.append((str(Path(path)), weight))
    if sum(w for _, w in out) <= 0:
        raise ValueError("data sources: all weights are 0")
    if len(set(fingerprints.values())) > 1:
        raise ValueError("data sources use different tokenizers: "
                         + ", ".join(f"{p} ({fp[:12]})" for p, fp in fingerprints.items()))
    return out


def mixture_fractions(sources: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Normalised weights (the expected fraction of rows drawn from each source)."""
    total = sum(w for _, w in sources)
    return {p: w / total for p, w in sources}
