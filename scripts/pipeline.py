"""Run the whole SambaY pipeline (prepare -> pretrain -> SFT stages -> DPO, evaluating after each) from one recipe.

    python scripts/pipeline.py                          # recipes/pipeline/demo.yaml, the CPU demo
    python scripts/pipeline.py --config-name=smoke      # a few steps per stage
    python scripts/pipeline.py nproc_per_node=8 ++stages.pretrain.overrides.trainer.max_steps=2000
    python scripts/pipeline.py dry_run=true             # every selected stage's own dry run; writes nothing

Each stage is a subprocess (``torchrun -m <entry>`` or ``python -m <entry>``) whose output is also appended to
``<run_dir>/logs/<stage>.log``. A stage whose ``done`` file exists is skipped, unless it sets ``rerun_when_done``
(data.prepare then checks the complete directory against its recipe); relaunching an interrupted stage resumes it
(the trainers restart from their latest checkpoint). After each evaluation stage its gate is checked
and the report (``<run_dir>/report.md``, ``report.png``, ``metrics.json``) is rebuilt with ``train.report``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

if not __package__:  # run as a file: make the checkout's packages importable without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import DictConfig, OmegaConf

from recipes.entry import hydra_main
from scripts.pipeline_config import PipelineConfig, register_pipeline_schema
from train.evals.gates import Gate, GateFailed, check_gate
from train.report import annotate, load_stage
from train.report import write_report as write_stage_report

LAUNCHERS = ("torchrun", "python")
# The override that turns each entry point into its dry run (build and check everything, write nothing).
DRY_RUN_OVERRIDES = {
    "data.prepare": "dry_run=true",
    "train.pretrain": "trainer.dry_run=true",
    "train.sft": "trainer.dry_run=true",
    "train.dpo": "trainer.dry_run=true",
    "train.evaluate": "dry_run=true",
}
# The keys ``seed=N`` sets for each entry point: every RNG a stage draws from (init, data order, dropout, sampling,
# on-policy pairing). data.prepare is left out on purpose: its seed makes the dataset, held-out problems included,
# and pipeline seeds measure training's spread on one fixed dataset (paired comparisons need the same problems).
SEED_KEYS = {
    "train.pretrain": ("trainer.seed",),
    "train.sft": ("trainer.seed",),
    "train.dpo": ("trainer.seed", "dpo.on_policy.sampling.seed"),
    "train.evaluate": ("math.sampling.seed",),
}
# Hydra override values made only of these characters need no quoting.
_PLAIN_VALUE = re.compile(r"^[\w./:@+-]+$")


class PipelineError(RuntimeError):
    """A pipeline recipe is invalid or a stage failed."""


def hydra_value(value) -> str:
    """Render a Python value as a Hydra command-line override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN_VALUE.match(text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def flatten_overrides(overrides: Mapping, prefix: str = "") -> list[str]:
    """``{"trainer": {"max_steps": 5}, "+a.b": [1]}`` -> ``["trainer.max_steps=5", "+a.b=[1]"]``.

    Nested mappings become dotted keys; a key starting with ``+`` (Hydra: add a new key) keeps the ``+``
    in front of the whole dotted path, and its value is passed whole.
    """
    out = []
    for key, value in overrides.items():
        key = str(key)
        add = key.startswith("+") or prefix.startswith("+")
        path = (prefix.lstrip("+") + "." if prefix else "") + key.lstrip("+")
        path = ("+" if add else "") + path
        if isinstance(value, Mapping) and value and not key.startswith("+"):
            out += flatten_overrides(value, path)
        else:
            out.append(f"{path}={hydra_value(value)}")
    return out


def stage_dir(cfg: PipelineConfig, name: str) -> Path:
    stage = cfg.stages[name]
    return Path(stage.dir) if stage.dir else Path(cfg.run_dir) / name


def done_path(cfg: PipelineConfig, name: str) -> Path:
    return stage_dir(cfg, name) / cfg.stages[name].done


def is_done(cfg: PipelineConfig, name: str) -> bool:
    return done_path(cfg, name).exists()


def needs_run(cfg: PipelineConfig, name: str) -> bool:
    return cfg.stages[name].rerun_when_done or not is_done(cfg, name)


def stage_args(cfg: PipelineConfig, name: str) -> list[str]:
    """The entry module followed by its arguments (what comes after ``-m``)."""
    stage = cfg.stages[name]
    args = [stage.entry]
    if stage.recipe:
        args.append(f"--config-name={stage.recipe}")
    if stage.dir_key:
        args.append(f"{stage.dir_key}={hydra_value(str(stage_dir(cfg, name)))}")
    return args + seed_overrides(cfg, stage.entry) + flatten_overrides(stage.overrides)


def seed_overrides(cfg: PipelineConfig, entry: str) -> list[str]:
    """``cfg.seed`` as the seed overrides of ``entry`` (:data:`SEED_KEYS`); none when ``seed`` is unset. They come
    before the stage's ``overrides``, so a seed pinned there in the pipeline recipe wins."""
    if cfg.seed is None:
        return []
    return [f"{key}={cfg.seed}" for key in SEED_KEYS.get(entry, ())]


def stage_nproc(cfg: PipelineConfig, name: str) -> int:
    stage = cfg.stages[name]
    return 1 if stage.launcher == "python" else (stage.nproc or cfg.nproc_per_node)


def launch_command(cfg: PipelineConfig, name: str) -> list[str]:
    """The full single-node command line of a stage (torchrun standalone, or plain python)."""
    args = stage_args(cfg, name)
    if cfg.stages[name].launcher == "python":
        return [sys.executable, "-m", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={stage_nproc(cfg, name)}", "-m", *args]


def validate(cfg: PipelineConfig) -> None:
    """Raise PipelineError naming the stage and key of the first problem in the recipe."""
    if not cfg.stages:
        raise PipelineError("pipeline recipe declares no stages")
    if cfg.nproc_per_node < 1:
        raise PipelineError(f"nproc_per_node must be >= 1, got {cfg.nproc_per_node}")
    if cfg.plan and cfg.dry_run:
        raise PipelineError("plan=true and dry_run=true: choose one (plan writes the Slurm plan, dry_run writes nothing)")
    seen: list[str] = []
    for name, stage in cfg.stages.items():
        where = f"stages.{name}"
        if not stage.entry:
            raise PipelineError(f"{where}.entry: no entry module given")
        if stage.launcher not in LAUNCHERS:
            raise PipelineError(f"{where}.launcher: {stage.launcher!r} is not one of {LAUNCHERS}")
        if stage.nproc is not None and stage.nproc < 1:
            raise PipelineError(f"{where}.nproc: must be >= 1, got {stage.nproc}")
        if stage.nproc is not None and stage.launcher == "python":
            raise PipelineError(f"{where}.nproc: a launcher: python stage runs one process; nproc applies to torchrun")
        if not stage.done:
            raise PipelineError(f"{where}.done: a stage needs a file that marks it complete")
        if stage.eval_of:
            if stage.eval_of not in seen:
                raise PipelineError(f"{where}.eval_of: {stage.eval_of!r} is not a stage declared before {name!r}")
            if stage.done != "eval.json":
                raise PipelineError(f"{where}.done: an evaluation stage is complete when eval.json exists, "
                                    f"got {stage.done!r}")
        if stage.gate is not None:
            if not stage.eval_of:
                raise PipelineError(f"{where}.gate: gates belong on evaluation stages (set eval_of)")
            if not isinstance(stage.gate, Mapping):
                raise PipelineError(f"{where}.gate: a mapping such as {{metric: accuracy, min: 0.1}}, got "
                                    f"{stage.gate!r}")
            try:
                Gate.from_mapping(stage.gate, where=f"{where}.gate")
            except ValueError as err:
                raise PipelineError(str(err)) from None
        seen.append(name)
    for name in cfg.only or []:
        if name not in cfg.stages:
            raise PipelineError(f"only: unknown stage {name!r}; stages are {list(cfg.stages)}")


def model_dir(cfg: PipelineConfig, name: str) -> Path:
    """Where a training stage keeps its run (the parent of its ``done`` file): curves and eval land there."""
    return done_path(cfg, name).parent


def stage_results(cfg: PipelineConfig) -> list:
    """One ``train.report.StageResult`` per evaluated stage, named by its path under ``run_dir``."""
    results = []
    for name, stage in cfg.stages.items():
        if not stage.eval_of or not is_done(cfg, name):
            continue
        trained = model_dir(cfg, stage.eval_of)
        result = load_stage(trained, name=_relative_name(trained, cfg.run_dir), gate=stage.gate)
        result.metrics.update(json.loads((stage_dir(cfg, name) / "eval.json").read_text()))
        result.eval_dir = stage_dir(cfg, name)  # its per_problem.jsonl feeds the report's paired comparisons
        results.append(result)
    return results


def _relative_name(path: Path, root: str) -> str:
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def write_report(cfg: PipelineConfig) -> Path | None:
    results = stage_results(cfg)
    if not results:
        return None
    try:
        return write_stage_report(cfg.run_dir, results)
    except ValueError as err:  # e.g. two evaluations of different problems cannot be paired
        raise PipelineError(f"report of {cfg.run_dir}: {err}") from None


def check_stage_gate(cfg: PipelineConfig, name: str) -> None:
    """Raise ``train.evals.gates.GateFailed`` when the evaluation stage ``name`` misses its gate.

    The gate reads what the report shows for the stage: its metrics with 95% intervals and its paired comparison
    with the previous evaluated stage (``train.report.annotate``)."""
    stage = cfg.stages[name]
    if stage.gate is None:
        return
    results = annotate(stage_results(cfg))
    result = next(r for r in results if r.eval_dir == stage_dir(cfg, name))
    check_gate(stage.eval_of, result.gate_metrics(), stage.gate)


def run_stage(cfg: PipelineConfig, name: str) -> None:
    """Run one stage as a subprocess, echoing and appending its output to ``<run_dir>/logs/<name>.log``."""
    cmd = launch_command(cfg, name)
    log_path = Path(cfg.run_dir) / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{k: str(v) for k, v in cfg.env.items()}}
    print(f"[pipeline] stage {name}: {' '.join(cmd)}", flush=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        # A scheduler's SIGTERM reaches only this process: hand it on so the stage can checkpoint and exit.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
        try:
            for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                log.write(chunk)
            rc = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if proc.poll() is None:  # we were interrupted: let the stage checkpoint and exit before killing it
                proc.terminate()
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    if rc != 0:
        raise PipelineError(f"stage {name!r} failed with exit status {rc}; log: {log_path}")
    if not is_done(cfg, name):
        raise PipelineError(f"stage {name!r} exited 0 but did not write {done_path(cfg, name)}; log: {log_path}")


def write_plan(cfg: PipelineConfig) -> list[str]:
    """Write ``<run_dir>/plan/<stage>.args`` (one argument per line) for each pending stage.

    Returns ``"<stage> <nproc> <launcher> <args file>"`` lines, the input of ``slurm/submit.sh``.
    """
    plan_dir = Path(cfg.run_dir) / "plan"
    plan_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in selected_stages(cfg):
        if not needs_run(cfg, name):
            continue
        args = stage_args(cfg, name)
        if any("\n" in a for a in args):
            raise PipelineError(f"stages.{name}: an argument contains a newline; cannot write a plan")
        path = plan_dir / f"{name}.args"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(args) + "\n")
        os.replace(tmp, path)
        lines.append(f"{name} {stage_nproc(cfg, name)} {cfg.stages[name].launcher} {path}")
    return lines


def selected_stages(cfg: PipelineConfig) -> list[str]:
    return [n for n in cfg.stages if cfg.only is None or n in cfg.only]


def run_pipeline(cfg: PipelineConfig) -> Path | None:
    """Run every pending stage in order; return the report path (None when nothing was evaluated).

    Raises PipelineError when a stage fails and ``train.evals.gates.GateFailed`` when a gate fails (after the
    report has been written) and ``fail_on_gate`` is set.
    """
    validate(cfg)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    for name in selected_stages(cfg):
        stage = cfg.stages[name]
        if not needs_run(cfg, name):
            print(f"[pipeline] stage {name}: complete ({done_path(cfg, name)} exists), skipping", flush=True)
        else:
            run_stage(cfg, name)
        if stage.eval_of:
            report = write_report(cfg)
            try:
                check_stage_gate(cfg, name)
            except GateFailed as err:
                if cfg.fail_on_gate:
                    raise GateFailed(f"{err}; report: {report}") from None
                print(f"[pipeline] {err} (fail_on_gate=false: going on)", flush=True)
    return write_report(cfg)


def dry_run_command(cfg: PipelineConfig, name: str, inputs_ready: bool = True) -> list[str]:
    """The stage's command with its entry point's dry-run override appended. When ``inputs_ready`` is False (an
    earlier selected stage is still pending, so the files this stage reads do not exist yet) only its
    configuration can be checked: Hydra composes it against the entry point's schema (``--cfg job``: unknown or
    mistyped keys fail) without running the stage."""
    entry = cfg.stages[name].entry
    if entry not in DRY_RUN_OVERRIDES:
        raise PipelineError(f"stages.{name}.entry: {entry!r} has no known dry run; entry points with one: "
                            f"{sorted(DRY_RUN_OVERRIDES)}")
    if inputs_ready:
        return launch_command(cfg, name) + [DRY_RUN_OVERRIDES[entry]]
    return [sys.executable, "-m", *stage_args(cfg, name), DRY_RUN_OVERRIDES[entry], "--cfg", "job"]


def dry_run_pipeline(cfg: PipelineConfig) -> None:
    """Dry-run every selected stage in order, each in its own process; nothing is written, not even the logs or
    the report. A stage after a pending one (on a fresh clone: everything after ``prepare``) gets the config
    check of :func:`dry_run_command`, since its inputs are that stage's outputs. Raises PipelineError naming the
    stages that failed."""
    validate(cfg)
    env = {**os.environ, **{k: str(v) for k, v in cfg.env.items()}}
    failed, pending = [], []
    for name in selected_stages(cfg):
        ready = not pending
        cmd = dry_run_command(cfg, name, ready)
        what = "dry run" if ready else f"config check (its inputs come from pending stage {pending[0]})"
        print(f"[pipeline] {what} of stage {name}: {' '.join(cmd)}", flush=True)
        # The composed config of a config check is not the point; its errors (stderr) are.
        rc = subprocess.run(cmd, env=env, stdout=None if ready else subprocess.DEVNULL).returncode
        if rc != 0:
            print(f"[pipeline] {what} of stage {name} failed with exit status {rc}", flush=True)
            failed.append(name)
        if not is_done(cfg, name):
            pending.append(name)
    if failed:
        raise PipelineError(f"dry run failed for stage(s) {failed}")
    if pending[1:]:
        print(f"[pipeline] dry run ok; stages after {pending[0]} had their config checked only (their inputs "
              f"do not exist yet): rerun dry_run=true once {pending[0]} is done for their full dry run", flush=True)


def to_config(cfg: DictConfig) -> PipelineConfig:
    """Resolve a Hydra config into the typed schema (interpolations resolved, unknown keys rejected)."""
    schema = OmegaConf.structured(PipelineConfig)
    merged = OmegaConf.merge(schema, OmegaConf.to_container(cfg, resolve=True))
    pipe: PipelineConfig = OmegaConf.to_object(merged)
    return pipe


def run_recipe(cfg: DictConfig) -> int:
    """Run (or dry-run, or plan) a composed pipeline recipe; returns the process exit status."""
    pipe = to_config(cfg)
    try:
        if pipe.dry_run:
            dry_run_pipeline(pipe)
            print("[pipeline] dry run done, nothing written", flush=True)
            return 0
        if pipe.plan:
            validate(pipe)
            for line in write_plan(pipe):
                print(line)
            return 0
        report = run_pipeline(pipe)
    except (PipelineError, GateFailed) as err:
        print(f"[pipeline] error: {err}", file=sys.stderr, flush=True)
        return 1
    if report is None:
        print(f"[pipeline] done; no evaluation stage ran, so there is no report in {pipe.run_dir}", flush=True)
    else:
        print(f"[pipeline] done. Report: {report} (plots: {report.with_suffix('.png')})", flush=True)
    return 0


main = hydra_main("pipeline", register_pipeline_schema, run_recipe)


if __name__ == "__main__":
    main()
