"""Final-answer extraction and math equivalence for reasoning evaluation.

A completion's final answer is found by an ordered list of :class:`AnswerFormat` s; the first format whose marker
occurs in the completion decides (an empty answer there, e.g. ``\\boxed{}``, counts as none extracted, and later
formats are not consulted). The default, :data:`DEFAULT_ANSWER_FORMATS`, is the content of the last
``\\boxed{...}`` (``data.reasoning.extract_boxed``: nested braces allowed, ``\\fbox`` too), else the text after the
last ``#### `` marker (GSM8K style); ``math.answer_formats`` of ``train.evaluate`` picks others. DPO's sampled pairs
and the lm-eval harness task extract with the default.
Equivalence is decided in two steps: a fast path (normalised string equality, then exact rational comparison
of plain numbers such as ``1,234``, ``24.0``, ``$5``, ``3/4``, ``-0.5``), and only when neither side is a plain
number, math-verify's symbolic checker (LaTeX fractions, radicals, expressions, sets). The fast path decides
most GSM-style answers without sympy, which keeps scoring thousands of samples cheap.
"""
from __future__ import annotations

import enum
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from data.reasoning import extract_boxed

_HASH_RE = re.compile(r"####\s*([^\n]*)")
# "The answer is 56." / "The final answer is: 56" / "Answer: 56" (any case); the answer is on the rest of that
# line, or on the next non-blank one when the marker ends its line.
_ANSWER_IS_RE = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\b\s*:?|\banswer\s*:", re.IGNORECASE)
# A plain number: optional sign (not a minus between two operands, as in "5-3"), thousands groups, decimals, a/b.
_LAST_NUMBER_RE = re.compile(r"(?<![\w.])(?:(?<![\w)])-)?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?(?!\d|[.,]\d)")
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


class AnswerFormat(str, enum.Enum):
    """Where a completion states its final answer (``math.answer_formats`` lists them by these names)."""

    boxed = "boxed"  # the last complete \boxed{...} / \fbox{...}
    hash = "hash"  # the text after the last "####" (GSM8K), its first token unless it is LaTeX
    answer_is = "answer_is"  # the last "The answer is N" / "answer: N" (any case), N a token, $...$ or \boxed{}
    last_number = "last_number"  # the last plain number (1,234  -5  3.5  3/4) anywhere in the text


# What the demo's SFT data teaches ("The answer is \boxed{N}.") and GSM8K's ending, in that order.
DEFAULT_ANSWER_FORMATS: tuple[AnswerFormat, ...] = (AnswerFormat.boxed, AnswerFormat.hash)


def parse_answer_formats(names: Sequence[str | AnswerFormat], key: str) -> list[AnswerFormat]:
    """``names`` as :class:`AnswerFormat` s; an unknown, repeated or missing name is an error naming ``key``."""
    valid = [f.value for f in AnswerFormat]
    formats = []
    for name in names:
        if str(getattr(name, "value", name)) not in valid:
            raise ValueError(f"{key}: unknown answer format {name!r}; valid names: {valid}")
        formats.append(AnswerFormat(getattr(name, "value", name)))
    if not formats:
        raise ValueError(f"{key}: list at least one answer format of {valid}")
    if len(set(formats)) != len(formats):
        raise ValueError(f"{key}: a format is listed twice in {[f.value for f in formats]}")
    return formats


def extract_answer(text: str, formats: Sequence[AnswerFormat] = DEFAULT_ANSWER_FORMATS) -> str | None:
    """Final answer of a completion by the first of ``formats`` whose marker occurs in it (None: none does, or
    that format's answer is empty)."""
    for fmt in formats:
        found = _EXTRACTORS[AnswerFormat(fmt)](text)
        if found is not None:
            return found or None
    return None


def _hash(text: str) -> str | None:
    hashes = _HASH_RE.findall(text)
    if not hashes:
        return None
    answer = hashes[-1].strip()
    # Models often continue after the number ("#### 42<|end|>", "#### 42. Done"): keep the first token.
    answer = answer.split("<|")[0].strip()
    if answer and not _looks_like_math(answer):
        answer = answer.split()[0]
    return answer.rstrip(".").strip()


def _answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():].lstrip().split("\n")[0].split("<|")[0].strip()
    if rest.startswith("$"):
        inner = rest[1:].split("$")[0]  # "$56$." -> 56, "$\frac{1}{2}$" -> \frac{1}{2}
        return inner.strip().rstrip(".").strip()
    boxed = extract_boxed(rest) if rest.startswith(("\\boxed", "\\fbox")) else None
    if boxed is not None:
        return boxed
    return _first_token(rest).rstrip(".,;:!").strip()


def _first_token(s: str) -> str:
    """``s`` up to its first space outside braces ("\\frac{a + b}{2} apples" -> "\\frac{a + b}{2}")."""
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch == "{") - (ch == "}")
        if ch.isspace() and depth <= 0:
            return s[:i]
    return s


def _last_number(text: str) -> str | None:
    numbers = _LAST_NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


_EXTRACTORS = {AnswerFormat.boxed: extract_boxed, AnswerFormat.hash: _hash, AnswerFormat.answer_is: _answer_is,
               AnswerFormat.last_number: _last_number}


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


def grade(completion: str, reference: str, formats: Sequence[AnswerFormat] = DEFAULT_ANSWER_FORMATS) -> Grade:
    """Extract the final answer of ``completion`` (by ``formats``) and compare it with the reference answer."""
    extracted = extract_answer(completion, formats)
    if extracted is None:
        return Grade(extracted=None, correct=False)
    return Grade(extracted=extracted, correct=answers_equal(extracted, str(reference)))
