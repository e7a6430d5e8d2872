"""Preference pairs in TRL's conversational DPO format.

Record: ``{"prompt": [{"role": "user", "content": ...}], "chosen": [{"role": "assistant", ...}],
"rejected": [{"role": "assistant", ...}]}`` (extra keys such as ``answer`` / ``template_id`` are kept).
"""
from __future__ import annotations

import os
import random
from typing import Callable, Sequence

from data.chat_template import check_messages
from data.jsonl import DataFormatError, read_jsonl
from data.reasoning import corrupt_solution, format_prompt

FIELDS = ("prompt", "chosen", "rejected")


def validate_pair(rec: dict, where: str) -> dict:
    """Check one DPO record; a pair whose chosen equals rejected teaches nothing and is an error."""
    for key in FIELDS:
        check_messages(rec.get(key), where, key)
    for key in ("chosen", "rejected"):
        if any(m["role"] != "assistant" for m in rec[key]):
            raise DataFormatError(f"{where}: {key!r} messages must all have role 'assistant'")
    if rec["chosen"] == rec["rejected"]:
        raise DataFormatError(f"{where}: chosen and rejected are identical")
    return rec


def read_preference_jsonl(path: str | os.PathLike) -> list[dict]:
    """Validated DPO records from JSONL; errors name ``path`` and the record number."""
    return [validate_pair(r, f"{path}: record {i + 1}") for i, r in enumerate(read_jsonl(path, required=FIELDS))]


def make_pair(problem: dict, chosen: str, rejected: str) -> dict:
    """One conversational DPO record for a reasoning problem (its answer and template id are kept)."""
    return {"prompt": [{"role": "user", "content": format_prompt(problem["question"])}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "answer": str(problem["answer"]), "template_id": problem.get("template_id", "")}


def pairs_from_corruptions(problems: Sequence[dict], seed: int = 0) -> list[dict]:
    """Gold solution vs a corrupted one (a wrong step carried forward, or a wrong final answer).

    ``problems`` are reasoning records; with ``values`` (see ``generate_problems_with_values``) the error is
    injected into a step, otherwise the final answer is altered in the text.
    """
    rng = random.Random(seed)
    out = []
    for p in problems:
        bad = corrupt_solution(p, rng)
        if bad == p["solution"]:
            continue
        out.append(make_pair(p, p["solution"], bad))
    return out


def pairs_from_samples(problems: Sequence[dict], generate_fn: Callable[[list[str], int], list[list[str]]],
                       score_fn: Callable[[str, str], bool], k: int = 4, seed: int = 0,
                       max_pairs_per_problem: int = 1) -> list[dict]:
    """On-policy pairs: sample ``k`` completions per prompt, pair a correct one with an incorrect one.

    ``generate_fn(prompts, k)`` returns ``k`` completions per user prompt (``format_prompt(question)``);
    ``score_fn(completion, answer)`` says whether a completion is right. Problems whose samples are all right
    or all wrong give no pair. Identical chosen/rejected texts are skipped.
    """
    rng = random.Random(seed)
    prompts = [format_prompt(p["question"]) for p in problems]
    samples = generate_fn(prompts, k)
    if len(samples) != len(problems):
        raise ValueError(f"generate_fn returned {len(samples)} sample lists for {len(problems)} prompts")
    out = []
    for p, comps in zip(problems, samples):
        right = [score_fn(c, str(p["answer"])) for c in comps]  # once per completion: grading can be costly
        good = [c for c, ok in zip(comps, right) if ok]
        bad = [c for c, ok in zip(comps, right) if not ok]
        rng.shuffle(good)
        rng.shuffle(bad)
        for g, b in list(zip(good, bad))[:max_pairs_per_problem]:
            if g != b:
                out.append(make_pair(p, g, b))
    return out
