"""The default ``run.name``: what the run is (entry point, recipe, init checkpoint), for recipes that set none.

A recipe that names its runs keeps its name, and ``run.name=...`` on the command line wins over both. Without
either, every run of one recipe would share one name (and, through ``run.dir``'s default ``runs/${run.name}``, one
directory), whatever checkpoint it starts from.
"""
from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

EXPORT_DIR = "export"  # a run's export folder (train.runtime.run_dir.RunDir.export): the run's name is its parent's
HUB_CACHE_SNAPSHOTS = "snapshots"  # huggingface_hub's cache: models--<org>--<name>/snapshots/<revision>/
HUB_CACHE_PREFIX = "models--"


def checkpoint_label(init_from: str) -> str:
    """A short name for a checkpoint directory: its own name, its run's name for a run's ``export/``, the model's
    name for a snapshot in the Hugging Face cache."""
    path = Path(init_from).expanduser()
    if path.name in ("", ".", ".."):
        path = path.resolve()
    if path.name == EXPORT_DIR and path.parent.name:
        return path.parent.name
    if path.parent.name == HUB_CACHE_SNAPSHOTS and path.parent.parent.name.startswith(HUB_CACHE_PREFIX):
        return path.parent.parent.name.rsplit("--", 1)[-1]
    return path.name


def default_run_name(entry: str, recipe: str | None, init_from: str | None) -> str:
    """``<entry>-<recipe>-<init>``, leaving out what is unknown: ``sft-finetune-Phi-4-mini-flash-reasoning``."""
    parts = [entry, recipe, checkpoint_label(init_from) if init_from else None]
    return "-".join(p for p in parts if p)


def launched_recipe() -> str | None:
    """The recipe (``--config-name``) of this Hydra launch; None outside one (a config composed in code)."""
    return HydraConfig.get().job.config_name if HydraConfig.initialized() else None


def fill_run_name(dcfg: DictConfig, entry: str, init_key: str) -> None:
    """Set ``run.name`` to :func:`default_run_name` when neither the recipe nor the command line set it.

    ``init_key``: the config key of the checkpoint the run starts from (``sft.init_from``, ...), unset allowed.
    """
    if not OmegaConf.is_missing(dcfg.run, "name"):
        return
    init_from = OmegaConf.select(dcfg, init_key, default=None, throw_on_missing=False)
    dcfg.run.name = default_run_name(entry, launched_recipe(), init_from)
