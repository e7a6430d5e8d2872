"""Final-answer extraction and math equivalence for reasoning evaluation.

A completion's final answer is the content of its last ``\\boxed{...}`` (``data.reasoning.extract_boxed``:
nested braces allowed, ``\\fbox`` too), else the text after its last ``#### `` marker (GSM8K style). The
evaluation, DPO's sampled pairs and the lm-eval harness task all extract answers with :func:`extract_answer`.
Equivalence is decided in two steps: a fast path (normalised string equality, then exact rational comparison
of plain numbers such as ``1,234``, ``24.0``, ``$5``, ``3/4``, ``-0.5``), and only when neither side is a plain
number, math-verify's symbolic checker (LaTeX fractions, radicals, expressions, sets). The fast path decides
most GSM-style answers without sympy, which keeps scoring thousands of samples cheap.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from fractions import Fraction

from data.reasoning import extract_boxed

_HASH_RE = re.compile(r"####\s*([^\n]*)")
# Wrappers and decorations that never change the value of a GSM-style answer.
_STRIP_TOKENS = ("\\$", "$", "\\%", "%", "\\!", "\\,", "\\;", "\\ ", "dollars", "\\text{dollars}")
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_FRACTION_RE = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")
_LATEX_FRAC_RE = re.compile(r"^([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")


@dataclass(frozen=True)
class Grade:
    """Outcome of grading one completion: the extracted answer (None when nothing could be extracted) and
    whether it matches the reference."""

    extracted: str | None
    correct: bool


def extract_answer(text: str) -> str | None:
    """Final answer of a completion: last boxed expression, else the text after the last ``####``."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed or None
    hashes = _HASH_RE.findall(text)
    if hashes:
        answer = hashes[-1].strip()
        # Models often continue after the number ("#### 42<|end|>", "#### 42. Done"): keep the first token.
        answer = answer.split("<|")[0].strip()
        if answer and not _looks_like_math(answer):
            answer = answer.split()[0]
        return answer.rstrip(".").strip() or None
    return None


def _looks_like_math(s: str) -> bool:
    return "\\" in s or "{" in s


def _normalise(s: str) -> str:
    s = s.strip()
    for tok in _STRIP_TOKENS:
        s = s.replace(tok, "")
    s = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.strip().rstrip(".").strip()
    # Thousands separators: only strip commas between digit groups so "1,2" tuples survive.
    s = re.sub(r"(?<=\d),(?=\d{3}(\D|$))", "", s)
    return s.replace(" ", "")


def parse_number(s: str) -> Fraction | None:
    """Exact value of a plain number, ``a/b`` or ``\\frac{a}{b}`` after normalisation; None otherwise."""
    s = _normalise(s)
    if _NUMBER_RE.match(s):
        return Fraction(s)
    m = _FRACTION_RE.match(s)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    m = _LATEX_FRAC_RE.match(s)
    if m and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return -value if m.group(1) == "-" else value
    return None


def answers_equal(predicted: str, reference: str) -> bool:
    """True when ``predicted`` and ``reference`` denote the same mathematical value."""
    a, b = _normalise(predicted), _normalise(reference)
    if a == b:
        return True
    na, nb = parse_number(predicted), parse_number(reference)
    if na is not None and nb is not None:
        return na == nb
    if na is not None and nb is None and not _looks_like_math(reference):
        # Reference is plain non-numeric text (e.g. "yes"); a number cannot match it.
        return False
    return _symbolic_equal(predicted, reference)


def _symbolic_equal(predicted: str, reference: str) -> bool:
    from math_verify import parse, verify  # imported lazily: pulls in sympy + antlr (about a second)

    # math-verify's timeouts use SIGALRM, which only works on the main thread; elsewhere run without them
    # (inputs are short extracted answers, so parsing cannot run away).
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"${reference}$", parsing_timeout=timeout)
    pred = parse(f"${predicted}$", parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def grade(completion: str, reference: str) -> Grade:
    """Extract the final answer of ``completion`` and compare it with the reference answer."""
    extracted = extract_answer(completion)
    if extracted is None:
        return Grade(extracted=None, correct=False)
    return Grade(extracted=extracted, correct=answers_equal(extracted, str(reference)))
