"""Preference pairs in every TRL preference format, and the demo's pairs.

TRL's formats (https://huggingface.co/docs/trl/dataset_formats), all read by :func:`read_preference_data`:

- conversational, explicit prompt: ``{"prompt": [{"role": "user", "content": ...}], "chosen": [{"role":
  "assistant", ...}], "rejected": [{"role": "assistant", ...}]}`` (what ``data.prepare`` writes; extra keys such
  as ``answer`` / ``template_id`` are kept by :func:`read_preference_jsonl`);
- conversational, implicit prompt: ``{"chosen": [user..., assistant...], "rejected": [user..., assistant...]}``;
- standard, explicit prompt: ``{"prompt": "...", "chosen": "...", "rejected": "..."}``;
- standard, implicit prompt: ``{"chosen": "...", "rejected": "..."}``.

An implicit prompt is the longest shared prefix of chosen and rejected (TRL's ``maybe_extract_prompt``); the pairs
come out as ``{prompt, chosen, rejected}`` of one format (all strings, or all message lists), which TRL's
``DPOTrainer`` and ``train.alignment.preference_scoring`` tokenise alike.
"""
from __future__ import annotations

import os
import random
from typing import Callable, Sequence

from trl.data_utils import maybe_extract_prompt

from data.chat_template import check_messages
from data.jsonl import DataFormatError, read_jsonl
from data.reasoning import corrupt_solution, format_prompt
from data.records import read_records

FIELDS = ("prompt", "chosen", "rejected")
CONVERSATIONAL, STANDARD = "conversational", "standard"  # the two TRL formats (message lists / strings)


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


def pair_format(rec: dict, where: str) -> str:
    """``conversational`` when chosen is a list of messages, ``standard`` when a string, else an error."""
    if not ("chosen" in rec and "rejected" in rec):
        raise DataFormatError(f"{where}: a preference record needs 'chosen' and 'rejected' (and optionally "
                              f"'prompt'); has {sorted(rec)}")
    if isinstance(rec["chosen"], list):
        return CONVERSATIONAL
    if isinstance(rec["chosen"], str):
        return STANDARD
    raise DataFormatError(f"{where}: 'chosen' must be a string (standard format) or a list of messages "
                          f"(conversational format), got {type(rec['chosen']).__name__}")


def validate_standard_pair(rec: dict, where: str) -> dict:
    """Check one standard-format record: prompt, chosen and rejected non-empty strings, chosen != rejected."""
    for key in FIELDS:
        if not isinstance(rec.get(key), str) or not rec[key]:
            raise DataFormatError(f"{where}: {key!r} must be a non-empty string in the standard format (all of "
                                  f"prompt/chosen/rejected strings, or all message lists)")
    if rec["chosen"] == rec["rejected"]:
        raise DataFormatError(f"{where}: chosen and rejected are identical")
    return rec


def normalize_pair(rec: dict, where: str) -> tuple[str, dict]:
    """(format, ``{prompt, chosen, rejected}``) of a record in any TRL preference format (module docstring).

    An implicit prompt is extracted with TRL's ``maybe_extract_prompt``; it must be non-empty and leave both
    completions non-empty (two answers with no shared prompt are not a preference pair)."""
    fmt = pair_format(rec, where)
    explicit = "prompt" in rec and isinstance(rec["prompt"], list) == (fmt == CONVERSATIONAL)
    pair = maybe_extract_prompt({k: rec[k] for k in FIELDS if k in rec})
    if not explicit and not (pair["prompt"] and pair["chosen"] and pair["rejected"]):
        raise DataFormatError(f"{where}: no 'prompt' and chosen/rejected share no prompt before they differ "
                              "(implicit-prompt format: both hold the same prompt, then different answers)")
    pair = {k: pair[k] for k in FIELDS}
    if fmt == STANDARD:
        return fmt, validate_standard_pair(pair, where)
    pair = {k: check_messages(pair[k], where, k) for k in FIELDS}
    return fmt, validate_pair(pair, where)


def read_preference_data(spec: str | Sequence[str], key: str) -> list[dict]:
    """``{prompt, chosen, rejected}`` pairs of every record in ``spec`` (``data.records``: a file, a list of files,
    a saved dataset) in any TRL preference format; all records must share one format (strings or message lists:
    TRL tokenises a data set one way). Errors name the file and record, and ``key``."""
    pairs, first = [], None
    for where, rec in read_records(spec, key):
        fmt, pair = normalize_pair(rec, where)
        first = first or (fmt, where)
        if fmt != first[0]:
            raise DataFormatError(f"{where}: {fmt} record, but {first[1]} is {first[0]}: one data set holds one "
                                  f"format (set {key} to files of one format)")
        pairs.append(pair)
    return pairs


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
