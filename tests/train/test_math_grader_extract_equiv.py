import random
import re
import threading

import pytest

from data.reasoning import corrupt_solution, extract_boxed, generate_problems_with_values
from train.evals.math_grader import (DEFAULT_ANSWER_FORMATS, AnswerFormat, Grade, answers_equal, extract_answer, grade,
                                     parse_answer_formats, parse_number)


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{1} then \boxed{\frac{a}{\sqrt{2}}} done", r"\frac{a}{\sqrt{2}}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        ("step 1\n#### 1,234.<|end|>", "1,234"),
        ("#### 42 apples\nextra", "42"),
        ("first #### 3\nthen #### 5", "5"),
        (r"\boxed{7} and a truncated \boxed{8", "7"),
        ("no final answer here", None),
        (r"\boxed{}", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_boxed_nested_braces():
    assert extract_boxed(r"x \boxed{{a}{b{c}}} y") == "{a}{b{c}}"


@pytest.mark.parametrize(
    "pred, ref",
    [("1,234", "1234"), ("24.0", "24"), ("$5", "5"), ("5.", "5"), ("3/4", "0.75"), (r"\frac{1}{2}", "0.5"),
     (r"-\frac{3}{6}", "-0.5"), (r"\dfrac{10}{4}", "5/2"), ("50\\%", "50")],
)
def test_numeric_fast_path_equal(pred, ref):
    assert answers_equal(pred, ref)
    assert parse_number(pred) is not None


@pytest.mark.parametrize("pred, ref", [("7", "8"), ("0.33", "1/3"), ("1,234", "1235"), ("abc", "5"), ("5", "yes")])
def test_not_equal(pred, ref):
    assert not answers_equal(pred, ref)


@pytest.mark.parametrize("pred, ref", [(r"\sqrt{8}", r"2\sqrt{2}"), ("x+1", "1+x"), (r"\frac{\pi}{2}", r"\pi/2")])
def test_symbolic_equal(pred, ref):
    assert answers_equal(pred, ref)


def test_symbolic_not_equal():
    assert not answers_equal(r"\sqrt{3}", r"2\sqrt{2}")


def test_grade_reports_extraction_and_correctness():
    assert grade("work...\n#### 12", "12").correct
    g = grade(r"\boxed{13}", "12")
    assert g.extracted == "13" and not g.correct
    g = grade("I don't know", "12")
    assert g.extracted is None and not g.correct


def test_symbolic_path_works_off_main_thread():
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", answers_equal(r"\sqrt{8}", r"2\sqrt{2}")))
    t.start()
    t.join()
    assert out["v"] is True


# ---- configurable answer formats (math.answer_formats) ---------------------------------------------------------
A = AnswerFormat


@pytest.mark.parametrize(
    "text, fmt, expected",
    [
        (r"so \boxed{1,234} done", A.boxed, "1,234"),
        ("The answer is 56.", A.boxed, None),
        ("work\n#### -12 apples", A.hash, "-12"),
        ("The answer is 56.", A.hash, None),
        ("The answer is 56.", A.answer_is, "56"),
        ("the ANSWER is 1,234.", A.answer_is, "1,234"),
        ("The answer is $56$.", A.answer_is, "56"),
        (r"The answer is $\frac{1}{2}$, so done", A.answer_is, r"\frac{1}{2}"),
        (r"The answer is \frac{3}{4} apples.", A.answer_is, r"\frac{3}{4}"),
        (r"The answer is \boxed{12}.", A.answer_is, "12"),
        ("The final answer is: -7.", A.answer_is, "-7"),
        ("Answer: 3/4", A.answer_is, "3/4"),
        ("answer:\n\n  42<|end|>", A.answer_is, "42"),
        ("The answer is 5. Check: the answer is 6.", A.answer_is, "6"),
        ("The answer is 3.5.", A.answer_is, "3.5"),
        ("The answer is 56 apples, I think.", A.answer_is, "56"),
        ("The answer is .", A.answer_is, None),
        ("my answer is 5", A.answer_is, None),
        ("I had 1,234 apples and -5 pears; 3.5 left.", A.last_number, "3.5"),
        ("Total: 1,000,000 dollars.", A.last_number, "1,000,000"),
        ("It drops to -5.", A.last_number, "-5"),
        ("5-3=2 and 9-4", A.last_number, "4"),
        ("the ratio is 3/4", A.last_number, "3/4"),
        ("The answer is $56$.", A.last_number, "56"),
        ("version 1.2.3", A.last_number, None),
        ("no digits here", A.last_number, None),
    ],
)
def test_each_answer_format(text, fmt, expected):
    assert extract_answer(text, [fmt]) == expected


def test_first_format_with_a_marker_wins():
    text = r"The answer is 7. Let me box it: \boxed{8}. Steps used 9 items."
    assert extract_answer(text, [A.boxed, A.answer_is]) == "8"
    assert extract_answer(text, [A.answer_is, A.boxed]) == "7"
    assert extract_answer(text, [A.last_number, A.boxed]) == "9"
    assert extract_answer("The answer is 56.", [A.boxed, A.hash, A.answer_is]) == "56"  # falls through
    # An empty answer in the first format found is "not extracted", as the default did before the formats existed.
    assert extract_answer(r"\boxed{} #### 5", [A.boxed, A.hash]) is None
    assert extract_answer(r"\boxed{} #### 5", [A.hash, A.boxed]) == "5"


def test_grade_uses_the_formats():
    assert grade("The answer is 56.", "56") == Grade(extracted=None, correct=False)  # the default: boxed, hash
    assert grade("The answer is 56.", "56", [A.answer_is]) == Grade(extracted="56", correct=True)
    assert grade("The answer is $1,234$.", "1234", [A.answer_is]).correct
    assert not grade("The answer is 55.", "56", [A.answer_is]).correct


def _extract_answer_before_formats(text):
    """extract_answer as it was before answer formats were configurable (frozen copy): the default must match."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed or None
    hashes = re.findall(r"####\s*([^\n]*)", text)
    if hashes:
        answer = hashes[-1].strip().split("<|")[0].strip()
        if answer and not ("\\" in answer or "{" in answer):
            answer = answer.split()[0]
        return answer.rstrip(".").strip() or None
    return None


def test_default_formats_extract_exactly_as_before():
    problems = generate_problems_with_values(40, "heldout", seed=3) + generate_problems_with_values(40, "train", seed=4)
    texts = [p["solution"] for p in problems] + [corrupt_solution(p, random.Random(i)) for i, p in enumerate(problems)]
    texts += [t.replace(r"\boxed{", "#### ").replace("}.", "") for t in texts[:20]]  # GSM-style endings
    texts += ["The answer is 56.", r"\boxed{} #### 5", "#### ", "#### \\frac{1}{2} x", r"\boxed{3", "a #### 4\n#### 5.",
              r"\fbox{2} then #### 9", "####", "", "#### <|end|>", "x\n####  7,000 cars. <|end|>"]
    assert {"56", "5"} & {_extract_answer_before_formats(t) for t in texts}  # the corpus reaches the hash branch
    assert [extract_answer(t) for t in texts] == [_extract_answer_before_formats(t) for t in texts]
    assert [extract_answer(t, DEFAULT_ANSWER_FORMATS) for t in texts] == [extract_answer(t) for t in texts]
    assert DEFAULT_ANSWER_FORMATS == (A.boxed, A.hash)


def test_parse_answer_formats_errors_name_the_key_and_the_valid_names():
    assert parse_answer_formats(["answer_is", A.last_number], "math.answer_formats") == [A.answer_is, A.last_number]
    with pytest.raises(ValueError, match=r"math\.answer_formats: unknown answer format 'answer'; valid names: "
                                         r"\['boxed', 'hash', 'answer_is', 'last_number'\]"):
        parse_answer_formats(["boxed", "answer"], "math.answer_formats")
    with pytest.raises(ValueError, match=r"math\.answer_formats: list at least one"):
        parse_answer_formats([], "math.answer_formats")
    with pytest.raises(ValueError, match=r"math\.answer_formats: a format is listed twice"):
        parse_answer_formats(["hash", A.hash], "math.answer_formats")
