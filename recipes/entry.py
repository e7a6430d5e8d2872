"""The one Hydra entry point of every stage (``data.prepare``, ``train.pretrain|sft|dpo|evaluate``, the pipeline).

Each stage module builds its ``main`` here from three things: its recipe folder under ``recipes/``, the function
that registers its schema with Hydra's ConfigStore, and its task, a function of the composed recipe that returns
the process exit status. It lives in the recipes package because the recipes are what it composes, and because
it is the lowest layer every entry point may import (``data`` may not import ``train``).
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig

RECIPES_DIR = Path(__file__).resolve().parent
# Every entry point's default recipe: each recipe folder has a demo.yaml sized for the CPU demo.
DEFAULT_RECIPE = "demo"

Task = Callable[[DictConfig], "int | None"]


def _exiting(task: Task) -> Callable[[DictConfig], None]:
    """``task`` with its exit status turned into the process's (Hydra's CLI path drops a task's return value).

    ``functools.wraps`` keeps the task's module and name, from which Hydra derives the job name."""

    @functools.wraps(task)
    def run(dcfg: DictConfig) -> None:
        code = task(dcfg)
        if code:
            sys.exit(code)

    return run


def hydra_main(recipe_folder: str, register_schema: Callable[[], None], task: Task) -> Callable[[], None]:
    """The console entry point of a stage: register its schema, compose ``recipes/<recipe_folder>/<name>.yaml``
    with the command line's overrides (``--config-name`` picks the recipe, default ``demo``), run ``task`` on it
    and exit with its status."""
    config_dir = RECIPES_DIR / recipe_folder
    if not config_dir.is_dir():
        raise FileNotFoundError(f"recipe folder {config_dir} does not exist (recipe_folder={recipe_folder!r})")
    composed = hydra.main(version_base=None, config_path=str(config_dir), config_name=DEFAULT_RECIPE)(_exiting(task))

    def main() -> None:
        register_schema()  # the recipes' defaults name the schema: it must exist before Hydra composes
        composed()

    return main
