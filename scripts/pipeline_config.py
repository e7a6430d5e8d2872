"""Typed schema of the pipeline recipes in ``recipes/pipeline/`` (registered with Hydra's ConfigStore).

A pipeline is an ordered mapping of stages. Each stage runs one entry point (``python -m <entry>``) as a
subprocess, through ``torchrun`` unless it asks for a plain ``python`` process, and is complete once its
``done`` file exists; completed stages are skipped when the pipeline is relaunched (unless they ask to be rerun).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from data.layout import DEFAULT_DATA_DIR


@dataclass
class StageConfig:
    """One pipeline stage.

    entry: Python module run with ``-m`` (e.g. ``train.pretrain``) (default ``""``: invalid, every stage sets it).
    recipe: Hydra config name passed as ``--config-name`` (default ``demo``; ``""``: none passed).
    dir: the stage's output directory (default ``""``: ``<run_dir>/<stage name>``).
    dir_key: override key that points the entry point at ``dir`` (default ``run.dir``; ``""``: not passed).
    done: path relative to ``dir`` whose existence marks the stage complete (default ``DONE``).
    rerun_when_done: run the stage even when its ``done`` file exists, for an entry point that then only checks
        that its complete output still matches its recipe, in seconds (default False: a done stage is skipped).
        The demo's ``prepare`` sets it: ``data.prepare`` refuses a directory prepared with other settings.
    launcher: ``torchrun`` (default) or ``python`` (one plain process, e.g. data preparation).
    nproc: processes per node under torchrun (default ``None``: the pipeline's ``nproc_per_node``); an error on a
        ``launcher: python`` stage, which runs one process.
    overrides: Hydra overrides for the entry point, nested mappings or dotted keys; a key starting with
        ``+`` adds a key (default empty).
    eval_of: for an evaluation stage, the name of the stage whose model it scores; its ``dir`` must then
        hold ``eval.json`` (default ``""``: not an evaluation stage).
    gate: bounds the evaluation must satisfy, a mapping ``{metric, min, max, min_metric, max_metric}`` as in
        ``train.evals.gates.Gate`` (default ``None``: no gate). Only on evaluation stages. Typed ``Any`` because
        OmegaConf cannot merge a mapping into a ``None`` typed as a dict: a gate could then not be set from the
        command line on a stage that has none (``stages.eval_sft_basic.gate={metric:accuracy,min:0.1}``);
        ``scripts.pipeline.validate`` checks its keys and values instead.
    """

    entry: str = ""
    recipe: str = "demo"
    dir: str = ""
    dir_key: str = "run.dir"
    done: str = "DONE"
    rerun_when_done: bool = False
    launcher: str = "torchrun"
    nproc: Optional[int] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    eval_of: str = ""
    gate: Any = None


@dataclass
class PipelineConfig:
    """Schema of ``scripts/pipeline.py`` recipes.

    name: pipeline name (default ``demo``).
    run_dir: pipeline run directory holding one sub-directory per stage, ``report.md`` and ``report.png``
        (default ``runs/${name}``).
    data_dir: where ``data.prepare`` writes and the other stages read (default ``artifacts/data/demo``); the
        recipes pass it on with ``${data_dir}`` interpolations.
    nproc_per_node: torchrun processes per node for stages that do not set ``nproc`` (default 1).
    stages: the stages, run in this order (default empty; recipes declare them).
    only: run just these stages (default ``None``: all); the others must not be needed or already be done.
    plan: write each pending stage's command to ``<run_dir>/plan/<stage>.args`` and print
        ``<stage> <nproc> <launcher> <args file>`` lines instead of running (used by ``slurm/submit.sh``)
        (default False).
    dry_run: run each selected stage's own dry run instead (``trainer.dry_run=true`` for the trainers,
        ``dry_run=true`` for ``data.prepare`` and ``train.evaluate``), done stages included, and write nothing:
        no logs, no report (default False; not with ``plan``).
    fail_on_gate: a failing gate stops the pipeline with exit status 1 after writing the report
        (default True; False: record it in the report and go on).
    env: extra environment variables for every stage process (default empty).
    seed: the seed of every training and evaluation stage (``scripts.pipeline.SEED_KEYS`` lists the keys it sets
        per entry point: init, data order, sampling, on-policy pairing); ``data.prepare`` keeps its own, so every
        seed trains and evaluates on the same data (default ``None``: each stage recipe's own seed).
    """

    name: str = "demo"
    run_dir: str = "runs/${name}"
    data_dir: str = DEFAULT_DATA_DIR
    nproc_per_node: int = 1
    stages: dict[str, StageConfig] = field(default_factory=dict)
    only: Optional[list[str]] = None
    plan: bool = False
    dry_run: bool = False
    fail_on_gate: bool = True
    env: dict[str, str] = field(default_factory=dict)
    seed: Optional[int] = None


def register_pipeline_schema() -> None:
    """Register :class:`PipelineConfig` with Hydra's ConfigStore as ``pipeline_schema`` (idempotent)."""
    ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)
