"""Which preference pairs a DPO run trains on and scores: the user's own (``dpo.train_data`` / ``dpo.eval_data``, in
any TRL preference format, see ``data.preference``) or the prepared demo data (``dpo.data_dir``), with the held-out
split and the caps applied and reported.

Sources, first match wins:

- ``dpo.train_data`` set: its pairs train; ``dpo.eval_data`` if set is held out, else a seeded random
  ``dpo.eval_fraction`` of the pairs (at least 1, at most ``dpo.heldout_limit`` when set) is split off;
- else ``dpo.data_dir`` set: ``<data_dir>/preference/train.jsonl`` trains, ``dpo.eval_data`` or
  ``<data_dir>/preference/heldout.jsonl`` is held out;
- else an error naming both keys.

``dpo.train_limit`` keeps the first N training pairs and ``dpo.heldout_limit`` the first N held-out ones; what a
cap drops is said in the notes the run prints, as is the size of every split. How many optimizer steps a run takes
(:func:`optimizer_steps`): ``trainer.max_steps`` when > 0, else ``dpo.epochs`` passes over the training pairs.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from data.inputs import require_input
from data.layout import PreparedData
from data.preference import read_preference_data
from train.alignment.dpo_config import DPORunConfig

DATA_KEYS = "dpo.train_data (your own preference pairs) or dpo.data_dir (the output of python -m data.prepare)"


@dataclass(frozen=True)
class PreferenceSplit:
    """The offline training pairs, the held-out pairs, and one line per choice made about them (printed)."""

    train: list[dict]
    heldout: list[dict]
    notes: list[str] = field(default_factory=list)


def _source(spec: Any, key: str) -> tuple[list[dict], str]:
    return read_preference_data(spec, key), key


def _prepared(cfg: DPORunConfig, split: str) -> tuple[list[dict], str]:
    """A preference file of the prepared data, an error naming ``dpo.data_dir`` when it is missing."""
    path = PreparedData(cfg.dpo.data_dir).preference(split)
    require_input(path, "dpo.data_dir", remedy="run `python -m data.prepare` into dpo.data_dir, or set "
                  + ("dpo.train_data" if split == "train" else "dpo.eval_data"))
    return _source(str(path), "dpo.data_dir")


def split_heldout(pairs: list[dict], fraction: float, cap: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a seeded random ``fraction`` of ``pairs`` held out (at least 1, at most ``cap`` when
    ``cap`` > 0), both keeping the pairs' order. Needs 2 pairs or more."""
    if len(pairs) < 2:
        raise ValueError(f"dpo.train_data has {len(pairs)} pair(s): too few to split off held-out pairs; set "
                         "dpo.eval_data")
    n = min(max(1, round(fraction * len(pairs))), cap or len(pairs), len(pairs) - 1)
    held = set(random.Random(seed).sample(range(len(pairs)), n))
    return ([p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held])


def _capped(pairs: list[dict], limit: int, what: str, key: str, notes: list[str]) -> list[dict]:
    if limit and limit < len(pairs):
        notes.append(f"{key}={limit}: using the first {limit} of {len(pairs)} {what} pairs ({len(pairs) - limit} "
                     f"dropped; {key}=0 uses all)")
        return pairs[:limit]
    return pairs


def select_pairs(cfg: DPORunConfig, need_train: bool = True) -> PreferenceSplit:
    """The run's offline training and held-out pairs (module docstring); ``need_train=False`` (on-policy pairs
    replace the offline ones) reads training pairs only where the held-out split needs them."""
    d = cfg.dpo
    if d.train_data is None and d.data_dir is None:
        raise ValueError(f"no DPO preference data: set {DATA_KEYS}")
    notes: list[str] = []
    if d.train_data is not None and d.eval_data is None:
        pairs, key = _source(d.train_data, "dpo.train_data")
        train, heldout = split_heldout(pairs, d.eval_fraction, d.heldout_limit, cfg.trainer.seed)
        notes.append(f"held-out split: {len(heldout)} of {len(pairs)} pairs of {key} (dpo.eval_fraction="
                     f"{d.eval_fraction}, seed {cfg.trainer.seed}); {len(train)} train; set dpo.eval_data to "
                     "choose the held-out pairs")
    else:
        heldout, hkey = _source(d.eval_data, "dpo.eval_data") if d.eval_data is not None else _prepared(cfg, "heldout")
        heldout = _capped(heldout, d.heldout_limit, "held-out", "dpo.heldout_limit", notes)
        train, key = ([], "") if not need_train else (
            _source(d.train_data, "dpo.train_data") if d.train_data is not None else _prepared(cfg, "train"))
        notes.append(f"{len(heldout)} held-out pairs from {hkey}")
    if not need_train:
        return PreferenceSplit([], heldout, notes)
    train = _capped(train, d.train_limit, "training", "dpo.train_limit", notes)
    notes.append(f"{len(train)} offline training pairs from {key}")
    return PreferenceSplit(train, heldout, notes)


def optimizer_steps(cfg: DPORunConfig, n_pairs: int, world_size: int) -> tuple[int, str]:
    """(steps, note): ``trainer.max_steps`` when > 0, else enough steps for ``dpo.epochs`` passes over ``n_pairs``
    training pairs; the note says how much of the pairs the steps cover."""
    batch = cfg.dpo.per_device_batch_size * cfg.dpo.gradient_accumulation_steps * world_size
    if cfg.trainer.max_steps <= 0:
        steps = max(1, math.ceil(cfg.dpo.epochs * n_pairs / batch))
        return steps, (f"{steps} optimizer steps: dpo.epochs={cfg.dpo.epochs} over {n_pairs} training pairs at "
                       f"{batch} pairs per step (trainer.max_steps=0)")
    steps = cfg.trainer.max_steps
    seen = steps * batch
    cover = (f"{seen / n_pairs:.2f} passes over the {n_pairs} training pairs" if seen >= n_pairs else
             f"only {seen} of the {n_pairs} training pairs are seen (trainer.max_steps=0 runs dpo.epochs passes)")
    return steps, f"trainer.max_steps={steps} at {batch} pairs per step: {cover}"
