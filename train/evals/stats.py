"""95% intervals of accuracies and paired tests between two evaluations of the same problems.

- :func:`wilson_interval`: the Wilson score interval of a proportion. For pass@1 over k > 1 samples the
  "successes" are the sum of per-problem means; each per-problem mean lies in [0, 1], so its variance is at most
  p(1 - p) and the interval stays conservative.
- :func:`with_intervals`: adds ``<metric>_ci95: [low, high]`` next to every accuracy whose count is known.
- :func:`compare_outcomes`: stage B against stage A on the same problem ids: the difference of mean accuracies
  with a seeded paired-bootstrap 95% interval, and a p-value from the exact McNemar test (two-sided binomial
  on the discordant pairs) when every outcome is 0 or 1 (k = 1), else from the paired bootstrap.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from data.jsonl import read_jsonl

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
# Each accuracy that gets an interval -> the metric that holds its number of trials.
ACCURACY_COUNTS = {
    "accuracy": "num_problems",
    "pass_at_k": "num_problems",
    "blind_baseline_accuracy": "num_problems",
    "retrieval_accuracy": "retrieval_queries",
    "heldout_preference_accuracy": "heldout_pairs",
    "heldout_logp_accuracy_policy": "heldout_pairs",
    "heldout_logp_accuracy_ref": "heldout_pairs",
}
CI_SUFFIX = "_ci95"
PER_PROBLEM_FILE = "per_problem.jsonl"  # beside eval.json: {id, correct, samples} per problem
MCNEMAR = "exact McNemar"
BOOTSTRAP = "paired bootstrap"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``successes`` out of ``n`` trials (95% by default)."""
    if n <= 0:
        raise ValueError(f"wilson_interval: n must be >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must lie in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 or 1 that bound is exactly 0 or 1; the formula leaves a rounding residue (2.8e-17 at 0 of 12).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def with_intervals(metrics: Mapping) -> dict:
    """A copy of ``metrics`` with ``<accuracy>_ci95: [low, high]`` for each of :data:`ACCURACY_COUNTS` present
    together with its count (non-numbers, e.g. a diverged run's ``"nan"``, get none)."""
    out = dict(metrics)
    for key, count_key in ACCURACY_COUNTS.items():
        value, n = metrics.get(key), metrics.get(count_key)
        if _number(value) and _number(n) and n >= 1 and 0 <= value <= 1:
            out[key + CI_SUFFIX] = list(wilson_interval(value * n, int(n)))
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of ``b`` and ``c`` discordant pairs: twice the smaller binomial(b + c, 1/2)
    tail, at most 1 (1 when there is no discordant pair)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_bootstrap(before: np.ndarray, after: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float, float]:
    """(mean difference after - before, 95% percentile interval low, high, two-sided p) from ``resamples``
    resamples of the problems (the same problems on both sides). The p-value counts resampled differences at
    least as far from the observed one as the observed one is from 0 (the null centred on the resampling
    distribution), with the +1 correction."""
    diffs = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.concatenate([diffs[rng.integers(0, len(diffs), size=(n, len(diffs)))].mean(axis=1)
                            for n in _chunks(resamples, 1000)])
    observed = float(diffs.mean())
    low, high = np.percentile(means, [2.5, 97.5])
    extreme = int(np.sum(np.abs(means - observed) >= abs(observed) - 1e-12))
    return observed, float(low), float(high), (extreme + 1) / (resamples + 1)


def _chunks(total: int, size: int) -> list[int]:
    """Resample counts per draw, so memory stays at ``size`` x problems whatever ``total`` is."""
    return [min(size, total - i) for i in range(0, total, size)]


def compare_outcomes(before: Mapping, after: Mapping, before_name: str, after_name: str) -> dict:
    """Paired comparison of two evaluations' per-problem outcomes ``{problem id: correct in [0, 1]}``.

    Refuses (ValueError naming both) when the problem ids differ: only the same problems can be paired.
    """
    if set(before) != set(after):
        only_a, only_b = sorted(set(before) - set(after), key=str), sorted(set(after) - set(before), key=str)
        raise ValueError(f"cannot pair {before_name} with {after_name}: their problem ids differ "
                         f"({len(only_a)} only in the first, e.g. {only_a[:3]}; {len(only_b)} only in the "
                         f"second, e.g. {only_b[:3]}); evaluate both on the same problems")
    if not before:
        raise ValueError(f"cannot pair {before_name} with {after_name}: no problems")
    ids = sorted(before, key=str)
    a = np.array([float(before[i]) for i in ids])
    b = np.array([float(after[i]) for i in ids])
    diff, low, high, p_boot = paired_bootstrap(a, b)
    result = {"n": len(ids), "difference": diff, "difference_ci95": [low, high]}
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        lost, gained = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
        return {**result, "test": MCNEMAR, "p_value": mcnemar_exact_p(lost, gained), "lost": lost, "gained": gained}
    return {**result, "test": BOOTSTRAP, "p_value": p_boot}


def load_outcomes(path) -> dict:
    """``{problem id: correct}`` of a :data:`PER_PROBLEM_FILE`; errors name the file (duplicate ids too)."""
    outcomes: dict = {}
    for lineno, rec in enumerate(read_jsonl(path, required=("id", "correct")), start=1):
        if rec["id"] in outcomes:
            raise ValueError(f"{path}: record {lineno}: problem id {rec['id']!r} appears twice")
        outcomes[rec["id"]] = float(rec["correct"])
    return outcomes
