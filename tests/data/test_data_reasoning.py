"""Reasoning generator: correct arithmetic, boxed answers, disjoint train / held-out templates."""
from __future__ import annotations

import random
import re

import pytest

from data.reasoning import (FAMILIES, corrupt_solution, extract_boxed, format_prompt, generate_gsm_symbolic,
                            generate_problems, generate_problems_with_values, normalize_answer, template_ids)
from tests.data.answer_check import is_correct


def test_template_split_is_disjoint_and_covers_every_family():
    train, held = set(template_ids("train")), set(template_ids("heldout"))
    assert train.isdisjoint(held)
    assert {t.split("/")[0] for t in held} == {f.name for f in FAMILIES} == {t.split("/")[0] for t in train}
    assert all(len(f.templates) >= 6 for f in FAMILIES)


def test_problems_are_correct_and_well_formed():
    recs = generate_problems(300, "train", seed=0) + generate_problems(100, "heldout", seed=0)
    assert len({r["question"] for r in recs}) == 400
    for r in recs:
        assert set(r) == {"id", "template_id", "question", "solution", "answer"}
        assert r["solution"].endswith(f"The answer is \\boxed{{{r['answer']}}}.")
        assert extract_boxed(r["solution"]) == r["answer"] and isinstance(r["answer"], str)
        # every equation in the chain of thought is true
        for lhs, rhs in re.findall(r"(\d+ [-+*/] \d+) = (-?\d+)", r["solution"]):
            a, op, b = lhs.split()
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b), "/": int(a) / int(b)}[op] == int(rhs)
        assert int(r["answer"]) >= 0
    assert {r["template_id"] for r in recs[:300]} <= set(template_ids("train"))
    assert {r["template_id"] for r in recs[300:]} <= set(template_ids("heldout"))


def test_deterministic_and_family_filter():
    assert generate_problems(20, "train", seed=5) == generate_problems(20, "train", seed=5)
    assert generate_problems(20, "train", seed=5) != generate_problems(20, "train", seed=6)
    recs = generate_problems(50, "train", seed=1, families=["boxes"])
    assert {r["template_id"].split("/")[0] for r in recs} == {"boxes"}
    with pytest.raises(ValueError, match="unknown reasoning families"):
        generate_problems(5, "train", families=["nope"])
    with pytest.raises(ValueError, match="split must be"):
        generate_problems(5, "test")


def test_format_prompt_is_short_and_contains_question():
    q = generate_problems(1, "heldout")[0]["question"]
    p = format_prompt(q)
    assert p.startswith(q) and "\\boxed" in p and len(p) < len(q) + 60


def test_corrupted_solutions_are_wrong():
    rng = random.Random(0)
    for r in generate_problems_with_values(200, "train", seed=3):
        bad = corrupt_solution(r, rng)
        assert bad != r["solution"] and not is_correct(bad, r["answer"]) and extract_boxed(bad) is not None
    text_only = {"id": "x", "solution": "3 + 4 = 7. So 7 * 2 = 14.\nThe answer is \\boxed{14}.", "answer": "14"}
    for seed in range(10):
        bad = corrupt_solution(text_only, random.Random(seed))
        assert not is_correct(bad, "14") and bad.startswith("3 + 4 = 7")


def test_answer_extraction():
    assert extract_boxed("so \\boxed{\\frac{1}{2}} and then \\boxed{ 12 }") == "12"
    assert extract_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("no box") is None and extract_boxed("\\boxed{unclosed") is None
    assert normalize_answer("24.0") == "24" and normalize_answer("1,000") == "1000" and normalize_answer("$5.") == "5"
    assert is_correct("The answer is \\boxed{24.0}.", "24") and not is_correct("\\boxed{23}", "24")


def test_gsm_symbolic_splits_on_templates():
    train = generate_gsm_symbolic(40, "train", seed=0)
    held = generate_gsm_symbolic(15, "heldout", seed=0)
    assert {r["template_id"] for r in train}.isdisjoint({r["template_id"] for r in held})
    assert set(generate_gsm_symbolic(10, "heldout", seed=1)[0]) == set(held[0])
    for r in train + held:
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}.") and "####" not in r["solution"]
        assert normalize_answer(r["answer"]) == r["answer"]
