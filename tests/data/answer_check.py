"""The tests' answer check, shared by the reasoning and preference tests (the product grades with
``train.evals.math_grader``)."""
from __future__ import annotations

from data.reasoning import extract_boxed, normalize_answer


def is_correct(completion: str, answer: str) -> bool:
    """The completion's last ``\\boxed{}`` equals ``answer`` after normalisation."""
    got = extract_boxed(completion)
    return got is not None and normalize_answer(got) == normalize_answer(str(answer))
