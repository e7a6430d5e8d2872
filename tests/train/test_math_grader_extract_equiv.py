import threading

import pytest

from data.reasoning import extract_boxed
from train.evals.math_grader import answers_equal, extract_answer, grade, parse_number


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
