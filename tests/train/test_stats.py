"""train.evals.stats: Wilson intervals, exact McNemar, the paired bootstrap, and the per-problem outcome files."""
import json
import math

import numpy as np
import pytest

from train.evals.math_accuracy import per_problem_outcomes, score_samples
from train.evals.stats import (BOOTSTRAP, MCNEMAR, compare_outcomes, load_outcomes, mcnemar_exact_p,
                               paired_bootstrap, wilson_interval, with_intervals)


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat. Med. 17:857, Table I,
# method 3 (score interval without continuity correction).
@pytest.mark.parametrize("successes, n, low, high", [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0),
])
def test_wilson_matches_published_values(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize("n", [1, 4, 12, 1000])
def test_wilson_ends_are_exact_at_none_and_all(n):
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError, match="n must be >= 1"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"successes must lie in \[0, 10\]"):
        wilson_interval(11, 10)


def test_with_intervals_adds_each_counted_accuracy():
    metrics = {"accuracy": 0.4, "num_problems": 500, "pass_at_k": 0.6, "blind_baseline_accuracy": 0.15,
               "retrieval_accuracy": 0.5, "retrieval_queries": 12, "heldout_preference_accuracy": "nan",
               "heldout_pairs": 200, "extracted_fraction": 0.9}
    got = with_intervals(metrics)
    assert got["accuracy_ci95"] == pytest.approx(list(wilson_interval(200, 500)))
    assert got["accuracy_ci95"][0] == pytest.approx(0.357, abs=1e-3) and got["accuracy_ci95"][1] == pytest.approx(
        0.444, abs=1e-3)
    assert got["retrieval_accuracy_ci95"] == pytest.approx(list(wilson_interval(6, 12)))
    assert {"pass_at_k_ci95", "blind_baseline_accuracy_ci95"} <= set(got)
    # No interval without a number, or for what is not an accuracy.
    assert "heldout_preference_accuracy_ci95" not in got and "extracted_fraction_ci95" not in got
    assert "accuracy_ci95" not in with_intervals({"accuracy": 0.4})
    assert metrics.get("accuracy_ci95") is None  # the input is not changed


def test_mcnemar_exact_known_values():
    assert mcnemar_exact_p(1, 9) == pytest.approx(2 * (1 + 10) / 2 ** 10)  # 0.0215
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(4, 4) == 1.0
    assert mcnemar_exact_p(3, 17) == mcnemar_exact_p(17, 3)
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in [(3, 17), (10, 21), (40, 41), (0, 12)]:
        assert mcnemar_exact_p(b, c) == pytest.approx(scipy_stats.binomtest(b, b + c).pvalue, rel=1e-9)


def test_paired_bootstrap_no_change_is_zero_with_p_one():
    a = np.array([1.0, 0.0, 1.0, 0.5])
    assert paired_bootstrap(a, a, resamples=200) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_interval_matches_normal_theory_and_is_seeded():
    rng = np.random.default_rng(1)
    before = rng.random(400)
    after = before + rng.normal(0.05, 0.2, 400)
    diffs = after - before
    got = paired_bootstrap(before, after, resamples=4000, seed=3)
    assert got == paired_bootstrap(before, after, resamples=4000, seed=3)
    half = 1.96 * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert got[0] == pytest.approx(diffs.mean())
    assert got[1] == pytest.approx(diffs.mean() - half, abs=0.15 * half)
    assert got[2] == pytest.approx(diffs.mean() + half, abs=0.15 * half)
    assert got[3] < 0.001  # the mean shift is about 3.5 standard errors
    shuffled = paired_bootstrap(before, before + rng.normal(0.0, 0.2, 400), resamples=2000)
    assert shuffled[3] > 0.01 and shuffled[1] < 0 < shuffled[2]


def test_compare_binary_outcomes_uses_exact_mcnemar():
    before = {f"p{i}": float(i < 20) for i in range(100)}           # 20 right
    after = {f"p{i}": float(i < 18 or 20 <= i < 30) for i in range(100)}  # lost 2, gained 10
    got = compare_outcomes(before, after, "a/per_problem.jsonl", "b/per_problem.jsonl")
    assert got["test"] == MCNEMAR and (got["lost"], got["gained"], got["n"]) == (2, 10, 100)
    assert got["difference"] == pytest.approx(0.08)
    assert got["p_value"] == pytest.approx(mcnemar_exact_p(2, 10))
    low, high = got["difference_ci95"]
    assert low < 0.08 < high


def test_compare_fractional_outcomes_uses_paired_bootstrap():
    before = {i: 0.25 for i in range(50)}
    after = {i: 0.75 for i in range(50)}
    got = compare_outcomes(before, after, "a", "b")
    assert got["test"] == BOOTSTRAP and got["difference"] == pytest.approx(0.5)
    assert got["difference_ci95"] == pytest.approx([0.5, 0.5]) and got["p_value"] < 0.001


def test_compare_refuses_different_problems_naming_both_files():
    with pytest.raises(ValueError, match=r"cannot pair a/per_problem\.jsonl with b/per_problem\.jsonl: their "
                                         r"problem ids differ \(1 only in the first, e.g. \['x'\]; 1 only in the "
                                         r"second, e.g. \['y'\]\)"):
        compare_outcomes({"x": 1.0, "z": 0.0}, {"y": 1.0, "z": 0.0}, "a/per_problem.jsonl", "b/per_problem.jsonl")


def test_per_problem_outcomes_are_pass_at_1_per_problem(tmp_path):
    samples = [{"id": "a", "completion": "\\boxed{1}", "answer": "1"},
               {"id": "a", "completion": "\\boxed{2}", "answer": "1"},
               {"id": "b", "completion": "\\boxed{4}", "answer": "4"},
               {"id": "b", "completion": "\\boxed{4}", "answer": "4"}]
    metrics, graded = score_samples(samples)
    rows = per_problem_outcomes(graded)
    assert rows == [{"id": "a", "correct": 0.5, "samples": 2}, {"id": "b", "correct": 1.0, "samples": 2}]
    assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(metrics["accuracy"])
    path = tmp_path / "per_problem.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_outcomes(path) == {"a": 0.5, "b": 1.0}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    with pytest.raises(ValueError, match=r"per_problem\.jsonl: record 3: problem id 'a' appears twice"):
        load_outcomes(path)
    with pytest.raises(ValueError, match="sample 0 has no 'id'"):
        per_problem_outcomes([{"correct": True}])
