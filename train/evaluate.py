"""Evaluate a model export: math accuracy, validation perplexity, long-context retrieval.

    python -m train.evaluate [--config-name demo] model_path=runs/sft/math/export [overrides]
    python -m train.evaluate score_file=completions.jsonl     # score {completion, answer} JSONL, no model
    python -m train.evaluate model_path=... dry_run=true      # check everything, write nothing

Writes ``eval.json`` (every accuracy with its 95% interval, ``<metric>_ci95``), ``samples.jsonl`` (every graded
completion) and ``per_problem.jsonl`` (each problem's pass@1, what the paired tests between stages read) to
``output_dir`` and prints the metrics as one JSON object on the last line of stdout. A dry run checks what the run
would read and write (the export's config, built on the meta device; the tokenizer; the data of every enabled
evaluation; that ``eval.json`` may be written) and prints ``{"dry_run": {...}}`` instead.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

import sambay_model  # noqa: F401  (registers Phi4Flash with the Auto classes)
from data.atomic import check_writable
from data.inputs import require_input, require_setting
from data.jsonl import write_jsonl
from data.layout import PreparedData
from data.shards import check_compatible
from data.tokenizer import check_same_tokenizer, load_tokenizer
from recipes.entry import hydra_main
from train.evals.evaluate_config import EvalConfig, register_evaluate_schema
from train.evals.generation import load_model, resolve_device
from train.runtime.results_io import write_json
from train.evals.math_accuracy import (evaluate_math, load_problems, load_samples, per_problem_outcomes,
                                      score_samples)
from train.evals.perplexity import evaluate_perplexity
from train.evals.retrieval import evaluate_retrieval
from train.evals.stats import PER_PROBLEM_FILE, with_intervals
from train.runtime.model_build import require_export

# How to get a missing evaluation input (after "<key>: <path> does not exist; ").
_REMEDY = "run `python -m data.prepare` for data_dir, point the setting at existing data, or disable that evaluation"


@dataclass(frozen=True)
class EvalInputs:
    """What an evaluation of a model reads and writes, checked before anything runs.

    out_dir: where ``eval.json`` / ``samples.jsonl`` go.
    model_config: the export's Hugging Face config.
    problems_path, problems: the math problems (None when math is off).
    shard_dir: the perplexity shard set (None when perplexity is off).
    """

    out_dir: Path
    model_config: PretrainedConfig
    problems_path: Path | None = None
    problems: list[dict] | None = None
    shard_dir: str | None = None


def _check_shards(cfg: EvalConfig, data: PreparedData, model_config: PretrainedConfig) -> str:
    """The perplexity shard set, checked against the model's tokenizer and vocabulary and for its split."""
    shard_dir = str(require_setting(cfg.perplexity.shard_dir, "perplexity.shard_dir", data.pretrain, "data_dir",
                                    _REMEDY))
    manifest = check_compatible(shard_dir, cfg.model_path if cfg.check_tokenizer else None, model_config.vocab_size)
    for key in ("split", "unigram_split"):
        split = getattr(cfg.perplexity, key)
        if split is not None and split not in manifest["splits"]:
            raise ValueError(f"perplexity.{key}: {shard_dir} has no split {split!r} "
                             f"(it has {sorted(manifest['splits'])})")
    return shard_dir


def check_inputs(cfg: EvalConfig) -> EvalInputs:
    """Check everything an evaluation of ``cfg.model_path`` needs, before minutes of evaluation; write nothing."""
    if not cfg.model_path:
        raise ValueError("set model_path=<export dir> (or score_file=<jsonl> to score completions without a model)")
    model_path = require_export(cfg.model_path, key="model_path")
    out_dir = Path(cfg.output_dir) if cfg.output_dir else model_path.resolve().parent / "eval"
    check_writable(out_dir / "eval.json", cfg.overwrite)
    data = PreparedData(cfg.data_dir)
    if cfg.check_tokenizer:
        check_same_tokenizer(model_path, data.tokenizer)
    model_config = AutoConfig.from_pretrained(str(model_path), local_files_only=True)
    problems_path = problems = shard_dir = None
    if cfg.math.enabled:
        problems_path = require_setting(cfg.math.problems, "math.problems", data.reasoning("heldout"), "data_dir",
                                        _REMEDY)
        problems = load_problems(problems_path, limit=cfg.math.limit or None)
    if cfg.perplexity.enabled:
        shard_dir = _check_shards(cfg, data, model_config)
    return EvalInputs(out_dir, model_config, problems_path, problems, shard_dir)


def _score_file_inputs(cfg: EvalConfig) -> tuple[list[dict], Path | None]:
    """Score-file mode: (samples, eval.json path or None), checked before grading."""
    samples = load_samples(require_input(cfg.score_file, "score_file",
                                         "set score_file to a JSONL of {completion, answer} records"))
    out = Path(cfg.output_dir) / "eval.json" if cfg.output_dir else None
    if out is not None:
        check_writable(out, cfg.overwrite)
    return samples, out


def run_evaluation(cfg: EvalConfig) -> dict:
    """Run the enabled evaluations of ``cfg``; write eval.json (+ samples.jsonl); return the metrics."""
    if cfg.score_file:
        samples, out = _score_file_inputs(cfg)
        scored, graded = score_samples(samples, cfg.math.answer_formats)
        metrics = with_intervals({"score_file": str(cfg.score_file), **scored})
        if out is not None:
            write_jsonl(out.parent / PER_PROBLEM_FILE, per_problem_outcomes(graded), overwrite=True)
            write_json(out, metrics, overwrite=cfg.overwrite)
        return metrics
    inputs = check_inputs(cfg)
    model, tokenizer = load_model(cfg.model_path, cfg.device, cfg.dtype)
    metrics: dict = {"model_path": str(cfg.model_path)}
    samples = None
    if inputs.problems is not None:
        math_metrics, samples = evaluate_math(model, tokenizer, inputs.problems, cfg.math.sampling, progress=True,
                                              prompt_template=cfg.math.prompt_template,
                                              answer_formats=cfg.math.answer_formats)
        metrics.update(math_metrics)
        metrics["sampling"] = {"k": cfg.math.sampling.num_samples, "temperature": cfg.math.sampling.temperature,
                               "top_p": cfg.math.sampling.top_p, "max_new_tokens": cfg.math.sampling.max_new_tokens}
    if inputs.shard_dir is not None:
        metrics.update(evaluate_perplexity(model, inputs.shard_dir, cfg.perplexity))
    if cfg.retrieval.enabled:
        metrics.update(evaluate_retrieval(model, tokenizer, cfg.retrieval))
        metrics["retrieval_queries"] = cfg.retrieval.num_queries * len(cfg.retrieval.context_lengths)
    metrics = with_intervals(metrics)
    if samples is not None:
        # eval.json guards the output dir (checked above); files beside it without it are a crashed run's leftover.
        write_jsonl(inputs.out_dir / "samples.jsonl", samples, overwrite=True)
        write_jsonl(inputs.out_dir / PER_PROBLEM_FILE, per_problem_outcomes(samples), overwrite=True)
    write_json(inputs.out_dir / "eval.json", metrics, overwrite=cfg.overwrite)
    return metrics


def dry_run(cfg: EvalConfig) -> dict:
    """What :func:`run_evaluation` would read and write, after checking all of it; writes nothing.

    The model is built from its config on the meta device (shapes only, no weights read).
    """
    if cfg.score_file:
        samples, out = _score_file_inputs(cfg)
        return {"mode": "score_file", "score_file": str(cfg.score_file), "num_samples": len(samples),
                "output": None if out is None else str(out)}
    inputs = check_inputs(cfg)
    load_tokenizer(cfg.model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(inputs.model_config)
    evaluations = {}
    if inputs.problems is not None:
        evaluations["math"] = {"problems": str(inputs.problems_path), "num_problems": len(inputs.problems),
                               "k": cfg.math.sampling.num_samples,
                               "answer_formats": [f.value for f in cfg.math.answer_formats]}
    if inputs.shard_dir is not None:
        evaluations["perplexity"] = {"shard_dir": inputs.shard_dir, "split": cfg.perplexity.split}
    if cfg.retrieval.enabled:
        evaluations["retrieval"] = {"context_lengths": list(cfg.retrieval.context_lengths)}
    return {"mode": "model", "model_path": str(cfg.model_path), "model_type": inputs.model_config.model_type,
            "num_parameters": sum(p.numel() for p in model.parameters()), "device": resolve_device(cfg.device),
            "dtype": cfg.dtype, "output": str(inputs.out_dir / "eval.json"), "evaluations": evaluations}


def run_recipe(dcfg: DictConfig) -> int:
    """Run a composed evaluation recipe; returns the process exit status."""
    cfg: EvalConfig = OmegaConf.to_object(dcfg)  # runs the dataclasses' own validation
    result = {"dry_run": dry_run(cfg)} if cfg.dry_run else run_evaluation(cfg)
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True), flush=True)  # contract: the metrics are the LAST stdout line
    return 0


main = hydra_main("evaluate", register_evaluate_schema, run_recipe)


if __name__ == "__main__":
    main()
