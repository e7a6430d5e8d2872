"""The run directory: one per run, named (not timestamped), shared by all ranks; only rank 0 writes here.

Layout: ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoints/``, ``data_manifest.json``, ``wandb/``,
``export/``, ``run.lock`` (held by the live run, see :mod:`train.runtime.run_lock`) and ``DONE`` (written last: the
run is complete).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data.atomic import atomic_write_text


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
