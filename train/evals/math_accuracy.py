"""Math reasoning accuracy: sample k completions per held-out problem, extract and grade final answers.

pass@1 is the fraction of correct samples averaged over problems (each problem weighs the same whatever its
number of samples); ``pass_at_k`` (any of the k samples correct) is reported when k > 1;
``extracted_fraction`` is the share of samples whose final answer could be extracted at all.
``blind_baseline_accuracy`` is what a model that never reads the numbers would score (see
:func:`blind_baseline_accuracy`): accuracy means learning only where it is clearly above this.
:func:`per_problem_outcomes` is what the paired tests between stages read (``train.evals.stats``): one record
``{id, correct, samples}`` per problem, ``correct`` the problem's pass@1 (its share of correct samples), written
by ``train.evaluate`` to ``train.evals.stats.PER_PROBLEM_FILE`` beside ``eval.json``.
The user prompt is a ``str.format`` template of ``{question}`` (:func:`check_prompt_template`) and the answer is
extracted by an ordered list of ``math_grader.AnswerFormat`` s; both default to what the demo's SFT data teaches.
"""
from __future__ import annotations

import string
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from data.jsonl import read_jsonl
from data.reasoning import PROMPT_TEMPLATE
from train.evals.generation import SamplingConfig, chat_prompt, generate
from train.evals.math_grader import DEFAULT_ANSWER_FORMATS, AnswerFormat, grade

PROMPT_FIELD = "question"  # the one placeholder a prompt template may (and must) use


def check_prompt_template(template: str, key: str) -> str:
    """``template`` if it is a ``str.format`` template whose only placeholder is ``{question}`` (used at least once;
    literal braces doubled, as in ``\\boxed{{}}``); otherwise an error naming ``key``."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ValueError(f"{key}: {e} in {template!r}; write a literal brace doubled ({{{{ or }}}})") from None
    for name, spec, conv in fields:
        if name != PROMPT_FIELD or spec or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"{key}: unknown placeholder {shown} in {template!r}; the only placeholder is "
                             f"{{{PROMPT_FIELD}}} (write a literal brace doubled, e.g. \\boxed{{{{}}}})")
    if not fields:
        raise ValueError(f"{key}: {template!r} has no {{{PROMPT_FIELD}}} placeholder for the problem's question")
    return template


def render_prompt(template: str, question: str) -> str:
    """The user message of ``question`` by a template that :func:`check_prompt_template` accepted."""
    return template.format(**{PROMPT_FIELD: question})


def load_problems(path: str | Path, limit: int | None = None) -> list[dict]:
    """Reasoning records ``{id, question, answer, ...}`` of a JSONL file (first ``limit`` ones)."""
    records = read_jsonl(path, required=("question", "answer"))
    return records[:limit] if limit else records


def score_samples(samples: Iterable[dict], answer_formats: Sequence[AnswerFormat] = DEFAULT_ANSWER_FORMATS
                  ) -> tuple[dict, list[dict]]:
    """Metrics of graded ``{completion, answer[, id]}`` samples, plus each sample with its grade.

    Samples sharing an ``id`` are the k samples of one problem; samples without ``id`` are one problem each.
    Answers are extracted by the first of ``answer_formats`` that finds one.
    """
    graded, groups = [], OrderedDict()
    for n, s in enumerate(samples):
        g = grade(str(s["completion"]), str(s["answer"]), answer_formats)
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
        "answer_formats": [AnswerFormat(f).value for f in answer_formats],  # accuracies by other formats differ
    }
    if max(ks) > 1:
        metrics["pass_at_k"] = sum(any(g.correct for g in gs) for gs in groups.values()) / len(groups)
        metrics["k"] = max(ks)
    return metrics, graded


def per_problem_outcomes(graded: Iterable[dict]) -> list[dict]:
    """``{id, correct, samples}`` per problem of graded samples (:func:`score_samples`' second result), in first-seen
    order; ``correct`` is the problem's share of correct samples. Samples without ``id`` cannot be paired with
    another evaluation: an error."""
    groups: OrderedDict = OrderedDict()
    for n, s in enumerate(graded):
        if s.get("id") is None:
            raise ValueError(f"sample {n} has no 'id': per-problem outcomes need the problem id of every sample")
        groups.setdefault(s["id"], []).append(bool(s["correct"]))
    return [{"id": pid, "correct": sum(c) / len(c), "samples": len(c)} for pid, c in groups.items()]


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


def evaluate_math(model, tokenizer, problems: list[dict], sampling: SamplingConfig, progress: bool = False,
                  prompt_template: str = PROMPT_TEMPLATE,
                  answer_formats: Sequence[AnswerFormat] = DEFAULT_ANSWER_FORMATS) -> tuple[dict, list[dict]]:
    """Generate ``sampling.num_samples`` completions per problem and grade them: (metrics, graded samples).

    The user prompt is ``prompt_template`` rendered with the question (default: ``data.reasoning.PROMPT_TEMPLATE``,
    the same user prompt SFT trained on) in the tokenizer's chat template; answers are extracted by the first of
    ``answer_formats`` that finds one.
    """
    check_prompt_template(prompt_template, "prompt_template")
    prompts = [chat_prompt(tokenizer, render_prompt(prompt_template, p["question"])) for p in problems]
    completions = generate(model, tokenizer, prompts, sampling, progress=progress)
    samples = [
        {"id": p.get("id", i), "template_id": p.get("template_id"), "answer": p["answer"], "completion": c}
        for i, (p, cs) in enumerate(zip(problems, completions)) for c in cs
    ]
    metrics, graded = score_samples(samples, answer_formats)
    baseline = blind_baseline_accuracy(problems)
    if baseline is not None:
        metrics["blind_baseline_accuracy"] = baseline
    return metrics, graded
