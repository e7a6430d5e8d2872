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
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig

from recipes.closed_schema import UnknownKeyError, check_overrides, schema_type

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


def command_line_overrides(argv: list[str]) -> list[str]:
    """The overrides of a command line, as ``hydra.main`` reads them (its own parser: flags such as
    ``--config-name``/``-cn`` and ``--config-dir`` are not overrides)."""
    return get_args_parser().parse_args(argv).overrides


@dataclass(frozen=True)
class EntryPoint:
    """A stage's console entry point: calling it runs the stage on ``sys.argv``.

    recipe_folder: the folder under ``recipes/`` holding the stage's recipes.
    register_schema: stores the stage's schema in Hydra's ConfigStore as ``<recipe_folder>_schema``, the name its
        recipes' defaults list first.
    task: the function of the composed recipe that returns the exit status.
    """

    recipe_folder: str
    register_schema: Callable[[], None]
    task: Task

    @property
    def schema_name(self) -> str:
        return f"{self.recipe_folder}_schema"

    def __call__(self) -> None:
        """Refuse an unknown key before Hydra composes (recipes/closed_schema.py says why Hydra alone would not),
        then compose the recipe with the command line, run the task and exit with its status."""
        self.register_schema()  # the recipes' defaults name the schema: it must exist before Hydra composes
        try:
            check_overrides(schema_type(self.schema_name), command_line_overrides(sys.argv[1:]))
        except UnknownKeyError as e:
            sys.exit(f"Error: {e}")
        config_dir = str(RECIPES_DIR / self.recipe_folder)
        hydra.main(version_base=None, config_path=config_dir, config_name=DEFAULT_RECIPE)(_exiting(self.task))()


def hydra_main(recipe_folder: str, register_schema: Callable[[], None], task: Task) -> EntryPoint:
    """The console entry point of a stage: register its schema (as ``<recipe_folder>_schema``), refuse a command
    line key the schema does not have, compose ``recipes/<recipe_folder>/<name>.yaml`` with the command line's
    overrides (``--config-name`` picks the recipe, default ``demo``), run ``task`` on it and exit with its status."""
    config_dir = RECIPES_DIR / recipe_folder
    if not config_dir.is_dir():
        raise FileNotFoundError(f"recipe folder {config_dir} does not exist (recipe_folder={recipe_folder!r})")
    return EntryPoint(recipe_folder, register_schema, task)
