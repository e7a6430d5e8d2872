"""lm-evaluation-harness on a SambaY export, fully offline, with local tasks built from the prepared data.

``lm_eval --model hf`` only knows our model class after ``import sambay_model``; this entry point does that
import and then runs lm-eval (``HFLM`` loads the export with ``AutoModelForCausalLM``, as ``--model hf`` does).

    python -m train.lm_harness --model-path runs/demo/dpo/export --output runs/demo/dpo/lm_eval.json \\
        --limit 20        # --data-dir defaults to data.layout.DEFAULT_DATA_DIR
    # any lm_eval command line, with our classes registered (tasks from --include_path):
    python -m train.lm_harness lm_eval run --model hf --model_args pretrained=DIR,dtype=float32 \\
        --tasks sambay_reasoning_heldout --include_path DIR/tasks --device cpu --apply_chat_template

Local tasks written by ``write_local_tasks`` (into ``<output dir>/lm_eval_tasks/`` by default):
- ``sambay_reasoning_heldout``: generate_until on held-out reasoning problems with the chat template; the final
  answer is taken by ``train.evals.math_grader.extract_answer`` (the filter ``sambay_final_answer``, registered when
  this module is imported) and compared with the reference answer (exact_match);
- ``sambay_heldout_ppl``: loglikelihood_rolling over held-out problem + solution texts (word/byte perplexity,
  bits per byte).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import lm_eval
from lm_eval.__main__ import cli_evaluate
from lm_eval.api.filter import Filter
from lm_eval.api.registry import filter_registry
from lm_eval.tasks import TaskManager

import sambay_model  # noqa: F401  (registers Phi4Flash with AutoModelForCausalLM before HFLM loads it)
from data.atomic import atomic_write_text
from data.jsonl import read_jsonl, write_jsonl
from data.layout import DEFAULT_DATA_DIR, PreparedData
from data.reasoning import format_prompt
from train.runtime.results_io import write_json
from train.runtime.model_build import require_export
from train.evals.math_grader import extract_answer

REASONING_TASK = "sambay_reasoning_heldout"
PPL_TASK = "sambay_heldout_ppl"
FINAL_ANSWER_FILTER = "sambay_final_answer"


class FinalAnswerFilter(Filter):
    """Each response -> its final answer by ``train.evals.math_grader.extract_answer`` ("" when there is none)."""

    def apply(self, resps, docs):
        return [[extract_answer(r) or "" for r in rs] for rs in resps]


# Registered by name so the task YAML can refer to it; checked first because running this file as __main__
# and importing it by name would otherwise register two classes under one name (lm-eval refuses that).
if FINAL_ANSWER_FILTER not in filter_registry:
    filter_registry.register(FINAL_ANSWER_FILTER)(FinalAnswerFilter)


def _reasoning_task(data_file: Path, max_gen_toks: int) -> dict:
    return {
        "task": REASONING_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["<|end|>", "<|endoftext|>"], "max_gen_toks": max_gen_toks,
                              "do_sample": False},
        "filter_list": [{"name": "boxed", "filter": [{"function": FINAL_ANSWER_FILTER}, {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_punctuation": False, "regexes_to_ignore": [",", r"\$", r"\.$"]}],
        "metadata": {"version": 2.0},
    }


def _ppl_task(data_file: Path) -> dict:
    return {
        "task": PPL_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        # Registered metrics: lm-eval supplies their (weighted) aggregations.
        "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
        "metadata": {"version": 1.0},
    }


def write_local_tasks(data_dir: str | Path, out_dir: str | Path, max_gen_toks: int = 96) -> Path:
    """Write the two task YAMLs and their JSONL data (absolute paths, so any cwd works); return ``out_dir``."""
    problems = read_jsonl(PreparedData(data_dir).reasoning("heldout"), required=("question", "answer"))
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "reasoning_heldout.jsonl",
                [{"prompt": format_prompt(p["question"]), "answer": str(p["answer"])} for p in problems], overwrite=True)
    write_jsonl(out_dir / "heldout_text.jsonl",
                [{"text": p["question"] + "\n" + p.get("solution", "")} for p in problems], overwrite=True)
    # JSON is valid YAML; lm-eval reads *.yaml files from --include_path.
    for name, spec in ((REASONING_TASK, _reasoning_task(out_dir / "reasoning_heldout.jsonl", max_gen_toks)),
                       (PPL_TASK, _ppl_task(out_dir / "heldout_text.jsonl"))):
        atomic_write_text(out_dir / f"{name}.yaml", json.dumps(spec, indent=2) + "\n", overwrite=True)
    return out_dir


def run_harness(model_path: str | Path, tasks_dir: str | Path, tasks: list[str], limit: int | None = None,
                batch_size: int = 8, device: str = "cpu") -> dict:
    """lm-eval ``simple_evaluate`` with ``--model hf`` semantics on a local export; returns {task: metrics}."""
    model_path = require_export(model_path, key="--model-path")
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_path.resolve()},dtype=float32", tasks=tasks,
        task_manager=TaskManager(include_path=str(tasks_dir)), limit=limit, batch_size=batch_size, device=device,
        apply_chat_template=True, log_samples=False,
    )
    return numeric_results(results)


def numeric_results(results: dict) -> dict:
    """{task: {metric: number}} of an lm-eval results object (drops aliases, strings and flags)."""
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for task, metrics in results["results"].items()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run lm-evaluation-harness on a SambaY export with local tasks.")
    parser.add_argument("--model-path", required=True, type=Path)
    parser.add_argument("--data-dir", default=Path(DEFAULT_DATA_DIR), type=Path,
                        help=f"output of data.prepare (default: {DEFAULT_DATA_DIR})")
    parser.add_argument("--tasks", default=f"{REASONING_TASK},{PPL_TASK}")
    parser.add_argument("--tasks-dir", type=Path, default=None,
                        help="where the local task YAMLs are written (default: next to --output)")
    parser.add_argument("--output", type=Path, default=None, help="results JSON (default: print only)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-gen-toks", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm_eval"]:
        sys.argv = ["lm_eval", *argv[1:]]  # lm-eval's CLI parses sys.argv
        cli_evaluate()
        return 0
    args = _parser().parse_args(argv)
    if args.output is not None and args.output.exists() and not args.overwrite:
        print(f"error: {args.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    tasks_dir = args.tasks_dir or (args.output.parent if args.output else Path(args.model_path).parent) / "lm_eval_tasks"
    write_local_tasks(args.data_dir, tasks_dir, max_gen_toks=args.max_gen_toks)
    metrics = run_harness(args.model_path, tasks_dir, args.tasks.split(","), args.limit, args.batch_size, args.device)
    if args.output is not None:
        write_json(args.output, metrics, overwrite=args.overwrite)
    print(json.dumps(metrics, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
