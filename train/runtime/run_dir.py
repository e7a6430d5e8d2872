"""The run directory: one per run, named (not timestamped), shared by all ranks; only rank 0 writes here.

Layout: ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoints/``, ``data_manifest.json``, ``wandb/``,
``export/``, ``run.lock`` (held by the live run, see :mod:`train.runtime.run_lock`) and ``DONE`` (written last: the
run is complete).

A relaunch into a directory resumes (or, when ``DONE`` exists, does nothing) only with the config the run was
started with: :meth:`RunDir.check_relaunch` refuses a different one, listing the keys that differ, unless the new
config sets ``run.allow_config_change=true``. The keys in :data:`FREE_KEYS` may change freely.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from data.atomic import atomic_write_text

ALLOW_CHANGE_KEY = "run.allow_config_change"
# Keys (or whole sections) a relaunch may change: none of them changes what is trained, or how.
FREE_KEYS = (
    ALLOW_CHANGE_KEY,  # the permission itself
    "run.name",  # a label (W&B run name, default directory name); the directory is the run's identity
    "run.dir",  # the same directory may be spelled otherwise (relative or absolute, moved)
    "wandb",  # where and how metrics are mirrored
    "trainer.progress_bar",  # display
    "trainer.log_every",  # which steps get a metrics line; the updates are the same
    "trainer.save_every",  # checkpoint cadence: a resume is exact, so the trajectory does not depend on it
    "trainer.keep_last",  # how many checkpoints stay on disk
    "sft.stages_to_run",  # which stages this launch runs, not what a stage trains
    "trainer.export_max_shard_size",  # how the export's weights are split into files, not their values
    "deepspeed.collective_timeout_s",  # how long a rank waits for a dead peer; no effect on a healthy run
)
ABSENT = "<absent>"


class ConfigChangedError(ValueError):
    """A relaunch into a run directory with a config other than the one the run was started with."""


def flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b[0].c": leaf}`` of a nested config (mappings and lists); an empty mapping or list is a leaf."""
    if isinstance(tree, dict) and tree:
        items = ((f"{prefix}.{k}" if prefix else str(k), v) for k, v in tree.items())
    elif isinstance(tree, list) and tree:
        items = ((f"{prefix}[{i}]", v) for i, v in enumerate(tree))
    else:
        return {prefix: tree}
    return {key: leaf for k, v in items for key, leaf in flat_config(v, k).items()}


def _is_free(key: str) -> bool:
    return any(key == free or key.startswith(free + ".") or key.startswith(free + "[") for free in FREE_KEYS)


def config_changes(old_yaml: str, new_yaml: str) -> list[str]:
    """``key: old -> new`` for every key whose value differs between two config YAMLs, :data:`FREE_KEYS` left out
    (sorted by key; a key only one side has shows ``<absent>`` on the other)."""
    old, new = flat_config(yaml.safe_load(old_yaml) or {}), flat_config(yaml.safe_load(new_yaml) or {})
    keys = sorted(k for k in old.keys() | new.keys() if not _is_free(k) and old.get(k, ABSENT) != new.get(k, ABSENT))
    return [f"{k}: {_show(old, k)} -> {_show(new, k)}" for k in keys]


def _show(flat: dict[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else ABSENT


def change_allowed(config_yaml: str) -> bool:
    """The config's own ``run.allow_config_change`` (False when it has none)."""
    section, key = ALLOW_CHANGE_KEY.split(".")
    return bool(((yaml.safe_load(config_yaml) or {}).get(section) or {}).get(key, False))


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def data_manifest(self) -> Path:
        return self.root / "data_manifest.json"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def done(self) -> Path:
        return self.root / "DONE"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def wandb_id(self) -> Path:
        return self.root / "wandb_id"

    def is_done(self) -> bool:
        return self.done.exists()

    def check_relaunch(self, config_yaml: str, say: bool = True) -> None:
        """Refuse (:class:`ConfigChangedError`) a launch whose config differs from the one saved in ``config.yaml``
        in a key that matters, unless ``config_yaml`` allows it; a fresh directory passes. Read-only, so every rank
        may call it and all reach the same answer (the directory is shared); ``say``: print an allowed change."""
        if not self.config.is_file():
            return
        changes = config_changes(self.config.read_text(), config_yaml)
        if not changes:
            return
        listing = "\n  ".join(changes)
        if change_allowed(config_yaml):
            if say:
                print(f"[run_dir] {ALLOW_CHANGE_KEY}=true: accepting a changed config for {self.root} (old -> new):"
                      f"\n  {listing}", flush=True)
            return
        state = "is complete (DONE exists)" if self.is_done() else "was started"
        raise ConfigChangedError(
            f"{self.root} {state} with another config ({self.config}); this launch differs in (old -> new):"
            f"\n  {listing}\nUse another run.dir for a new run, or set {ALLOW_CHANGE_KEY}=true to continue this "
            f"one with the new config")

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)

    def write_config(self, yaml_text: str) -> None:
        """Write the resolved config; a different earlier config is kept as ``config.prev-N.yaml``, not lost."""
        if self.config.exists():
            old = self.config.read_text()
            if old == yaml_text:
                return
            n = 1
            while (self.root / f"config.prev-{n}.yaml").exists():
                n += 1
            kept = self.root / f"config.prev-{n}.yaml"
            atomic_write_text(kept, old)
            print(f"[run_dir] {self.config} differs from this launch's config; the old one is kept as {kept.name}",
                  flush=True)
        atomic_write_text(self.config, yaml_text, overwrite=True)

    def write_data_manifest(self, sources: list[dict]) -> None:
        """Record which shard sets (with their manifests) this run trained on."""
        atomic_write_text(self.data_manifest, json.dumps({"sources": sources}, indent=2) + "\n", overwrite=True)

    def mark_done(self, summary: dict) -> None:
        atomic_write_text(self.done, json.dumps(summary, indent=2) + "\n")
