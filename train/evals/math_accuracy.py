"""Math reasoning accuracy: sample k completions per held-out problem, extract and grade final answers.

pass@1 is the fraction of correct samples averaged over problems (each problem weighs the same whatever its
number of samples); ``pass_at_k`` (any of the k samples correct) is reported when k > 1;
``extracted_fraction`` is the share of samples whose final answer could be extracted at all.
``blind_baseline_accuracy`` is what a model that never reads the numbers would score (see
:func:`blind_baseline_accuracy`): accuracy means learning only where it is clearly above this.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from pathlib import Path

from data.jsonl import read_jsonl
from data.reasoning import format_prompt
from train.evals.generation import SamplingConfig, chat_prompt, generate
from train.evals.math_grader import grade


def load_problems(path: str | Path, limit: int | None = None) -> list[dict]:
    """Reasoning records ``{id, question, answer, ...}`` of a JSONL file (first ``limit`` ones)."""
    records = read_jsonl(path, required=("question", "answer"))
    return records[:limit] if limit else records


def score_samples(samples: Iterable[dict]) -> tuple[dict, list[dict]]:
    """Metrics of graded ``{completion, answer[, id]}`` samples, plus each sample with its grade.

    Samples sharing an ``id`` are the k samples of one problem; samples without ``id`` are one problem each.
    """
    graded, groups = [], OrderedDict()
    for n, s in enumerate(samples):
        g = grade(str(s["completion"]), str(s["answer"]))
        graded.append({**s, "extracted": g.extracted, "correct": g.correct})
        groups.setdefault(s.get("id", f"#{n}"), []).append(g)
    if not graded:
        raise ValueError("no samples to score")
    per_problem = [sum(g.correct for g in gs) / len(gs) for gs in groups.values()]
    ks = {len(gs) for gs in groups.values()}
    metrics = {
        "accuracy": sum(per_problem) / len(per_problem),
        "extracted_fraction": sum(s["extracted"] is not None for s in graded) / len(graded),
        "num_problems": len(groups),
        "num_samples": len(graded),
    }
    if max(ks) > 1:
        metrics["pass_at_k"] = sum(any(g.correct for g in gs) for gs in groups.values()) / len(groups)
        metrics["k"] = max(ks)
    return metrics, graded


def blind_baseline_accuracy(problems: list[dict]) -> float | None:
    """Accuracy of always answering the most common answer of the problem's family, where the family is the
    ``template_id`` prefix before ``/``; ``None`` when a problem has no ``template_id``.

    Small procedural problems have few distinct answers per family, so a model can score well above 0 by
    recognising the family and guessing, without copying a single number from the question. The modal answers
    are taken from ``problems`` themselves, which makes this an upper bound on such guessing.
    """
    if not problems or any(not p.get("template_id") for p in problems):
        return None
    by_family: dict[str, Counter] = {}
    for p in problems:
        by_family.setdefault(str(p["template_id"]).split("/")[0], Counter())[str(p["answer"])] += 1
    return sum(max(c.values()) for c in by_family.values()) / len(problems)


def load_samples(path: str | Path) -> list[dict]:
    """``{id, completion, answer}`` samples of a JSONL of ``{completion, answer}`` records (``completions: [..]``
    also accepted, one sample each); errors name the file and the record."""
    samples = []
    for lineno, rec in enumerate(read_jsonl(path, required=("answer",)), start=1):
        if "completion" not in rec and "completions" not in rec:
            raise ValueError(f"{path}: record {lineno} (blank lines not counted) needs 'completion' "
                             f"(or 'completions'); got keys {sorted(rec)}")
        completions = rec["completions"] if "completions" in rec else [rec["completion"]]
        if not isinstance(completions, list) or not completions:
            raise ValueError(f"{path}: record {lineno}: 'completions' must be a non-empty list")
        pid = rec.get("id", f"record{lineno}")
        samples += [{"id": pid, "completion": c, "answer": rec["answer"]} for c in completions]
    return samples


def evaluate_math(model, tokenizer, problems: list[dict], sampling: SamplingConfig,
                  progress: bool = False) -> tuple[dict, list[dict]]:
    """Generate ``sampling.num_samples`` completions per problem and grade them: (metrics, graded samples).

    Prompts are ``data.reasoning.format_prompt`` of the question: the same user prompt SFT trained on.
    """
    prompts = [chat_prompt(tokenizer, format_prompt(p["question"])) for p in problems]
    completions = generate(model, tokenizer, prompts, sampling, progress=progress)
    samples = [
        {"id": p.get("id", i), "template_id": p.get("template_id"), "answer": p["answer"], "completion": c}
        for i, (p, cs) in enumerate(zip(problems, completions)) for c in cs
    ]
    metrics, graded = score_samples(samples)
    baseline = blind_baseline_accuracy(problems)
    if baseline is not None:
        metrics["blind_baseline_accuracy"] = baseline
    return metrics, graded
