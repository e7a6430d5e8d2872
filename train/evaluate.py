"""Evaluate a model export: math accuracy, validation perplexity, long-context retrieval.

    python -m train.evaluate [--config-name demo] model_path=runs/sft/math/export [overrides]
    python -m train.evaluate score_file=completions.jsonl     # score {completion, answer} JSONL, no model

Writes ``eval.json`` (and ``samples.jsonl`` with every graded completion) to ``output_dir`` and prints the
metrics as one JSON object on the last line of stdout.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from train.eval_config import EvalConfig, register_eval_config


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


def load_model(model_path: str | Path, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) from a local HF export directory; never a hub id."""
    import torch
    from transformers import AutoModelForCausalLM

    import sambay_model  # noqa: F401  (registers Phi4Flash with the Auto classes)
    from data.tokenizer import load_tokenizer

    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"model_path {model_path}: no config.json (expected a Hugging Face export dir)")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=getattr(torch, dtype), local_files_only=True)
    return model.to(resolve_device(device)).eval(), load_tokenizer(model_path)


def run_evaluation(cfg: EvalConfig) -> dict:
    """Run the enabled evaluations of ``cfg``; write eval.json (+ samples.jsonl); return the metrics."""
    from data.atomic import check_writable
    from data.jsonl import write_jsonl
    from train.eval_io import write_json

    if cfg.score_file:
        from train.eval_math import score_file

        metrics = {"score_file": str(cfg.score_file), **score_file(cfg.score_file)}
        if cfg.output_dir:
            write_json(Path(cfg.output_dir) / "eval.json", metrics, overwrite=cfg.overwrite)
        return metrics
    if not cfg.model_path:
        raise ValueError("set model_path=<export dir> (or score_file=<jsonl> to score completions without a model)")
    data_dir = Path(cfg.data_dir)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.model_path).resolve().parent / "eval"
    check_writable(out_dir / "eval.json", cfg.overwrite)  # fail before minutes of evaluation, not after
    if cfg.check_tokenizer:
        from train.eval_tokenizer_check import check_same_tokenizer

        check_same_tokenizer(cfg.model_path, data_dir / "tokenizer")
    model, tokenizer = load_model(cfg.model_path, cfg.device, cfg.dtype)
    metrics: dict = {"model_path": str(cfg.model_path)}
    samples = None
    if cfg.math.enabled:
        from train.eval_math import evaluate_math, load_problems

        problems_path = cfg.math.problems or data_dir / "reasoning" / "heldout.jsonl"
        problems = load_problems(problems_path, limit=cfg.math.limit or None)
        math_metrics, samples = evaluate_math(model, tokenizer, problems, cfg.math.sampling, progress=True)
        metrics.update(math_metrics)
        metrics["sampling"] = {"k": cfg.math.sampling.num_samples, "temperature": cfg.math.sampling.temperature,
                               "top_p": cfg.math.sampling.top_p, "max_new_tokens": cfg.math.sampling.max_new_tokens}
    if cfg.perplexity.enabled:
        from data.shards import check_compatible
        from train.eval_perplexity import evaluate_perplexity

        shard_dir = cfg.perplexity.shard_dir or str(data_dir / "pretrain")
        check_compatible(shard_dir, cfg.model_path if cfg.check_tokenizer else None, model.config.vocab_size)
        metrics.update(evaluate_perplexity(model, shard_dir, cfg.perplexity))
    if cfg.retrieval.enabled:
        from train.eval_retrieval import evaluate_retrieval

        metrics.update(evaluate_retrieval(model, tokenizer, cfg.retrieval))
    if samples is not None:
        # eval.json guards the output dir (checked above); a samples.jsonl without it is a crashed run's leftover.
        write_jsonl(out_dir / "samples.jsonl", samples, overwrite=True)
    write_json(out_dir / "eval.json", metrics, overwrite=cfg.overwrite)
    return metrics


register_eval_config()


@hydra.main(version_base=None, config_path="../recipes/evaluate", config_name="demo")
def main(dcfg: DictConfig) -> None:
    cfg: EvalConfig = OmegaConf.to_object(dcfg)  # runs the dataclasses' own validation
    metrics = run_evaluation(cfg)
    sys.stdout.flush()
    print(json.dumps(metrics, sort_keys=True), flush=True)  # contract: the metrics are the LAST stdout line


if __name__ == "__main__":
    main()
