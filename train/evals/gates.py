"""Quality gates between pipeline stages.

A stage may declare in the pipeline recipe the bounds a metric of its evaluation must satisfy. A bound is a
number (``min``/``max``) or another metric of the same evaluation (``min_metric``/``max_metric``), and a metric
is a key of the stage's metrics or a dotted path into them (a list item by its index), e.g.

    gate: {metric: accuracy, min: 0.1}
    gate: {metric: perplexity, max_metric: unigram_perplexity}            # better than counting tokens
    gate: {metric: accuracy_ci95.0, min_metric: blind_baseline_accuracy}  # interval's lower end above guessing
    gate: {metric: paired_vs_previous.difference_ci95.1, min: 0.0}       # not significantly below the last stage

``check_gate`` raises ``GateFailed`` with a message that names the stage, the metric, its value and the bound;
the CLI turns that into exit status 1:

    python -m train.evals.gates --metrics runs/pipe/sft/eval/eval.json --stage sft --metric accuracy --min 0.1
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from train.runtime.results_io import read_metrics


class GateFailed(RuntimeError):
    """A stage's metrics did not satisfy its declared gate."""


BOUND_KEYS = ("min", "max", "min_metric", "max_metric")


@dataclass(frozen=True)
class Gate:
    """Bounds one metric must satisfy.

    metric: key or dotted path in the stage's metrics (no default: required).
    min: inclusive lower bound; None (default) = no lower bound.
    max: inclusive upper bound; None (default) = no upper bound (e.g. for perplexity).
    min_metric: the metric must be >= this other metric (key or dotted path); None (default) = none.
    max_metric: the metric must be <= this other metric; None (default) = none.
    """

    metric: str
    min: float | None = None
    max: float | None = None
    min_metric: str | None = None
    max_metric: str | None = None

    @classmethod
    def from_mapping(cls, spec: Mapping, where: str = "gate") -> Gate:
        unknown = set(spec) - {"metric", *BOUND_KEYS}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: metric, {', '.join(BOUND_KEYS)}")
        if not isinstance(spec.get("metric"), str) or not spec["metric"]:
            raise ValueError(f"{where}: 'metric' must be a non-empty string, got {spec.get('metric')!r}")
        bounds = {}
        for key in BOUND_KEYS:
            value = spec.get(key)
            if value is None:
                bounds[key] = None
            elif key.endswith("_metric"):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{where}: '{key}' must name a metric, got {value!r}")
                bounds[key] = value
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: '{key}' must be a number, got {value!r}")
            else:
                bounds[key] = float(value)
        if all(v is None for v in bounds.values()):
            raise ValueError(f"{where}: declare at least one of {', '.join(BOUND_KEYS)} for metric {spec['metric']!r}")
        return cls(metric=spec["metric"], **bounds)


def check_gate(stage_name: str, metrics: Mapping, gate: Gate | Mapping | None) -> None:
    """Raise ``GateFailed`` unless the gate's metric lies within its bounds in ``metrics`` (None = no gate)."""
    if gate is None:
        return
    if not isinstance(gate, Gate):
        gate = Gate.from_mapping(gate, where=f"stage {stage_name!r} gate")
    problem = _gate_problem(gate, metrics)
    if problem is not None:
        raise GateFailed(f"gate failed for stage {stage_name!r}: {problem}")


def metric_value(metrics: Mapping, path: str) -> float | str:
    """The number at ``path`` (a key, or dotted keys and list indices) in ``metrics``, or why there is none."""
    value = metrics
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            top = sorted(metrics) if value is metrics else sorted(value) if isinstance(value, Mapping) else value
            return f"metric {path!r} was not reported (at {part!r}: available {top})"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return f"metric {path!r} is {value!r}, not a number"
    return float(value)


def _gate_problem(gate: Gate, metrics: Mapping) -> str | None:
    """Why ``metrics`` miss ``gate``, or None when they satisfy it."""
    value = metric_value(metrics, gate.metric)
    if isinstance(value, str):
        return value
    for bound_metric, is_min in ((gate.min_metric, True), (gate.max_metric, False)):
        if bound_metric is None:
            continue
        bound = metric_value(metrics, bound_metric)
        if isinstance(bound, str):
            return bound
        if (value < bound) if is_min else (value > bound):
            return f"{gate.metric} = {value:.4g} {'<' if is_min else '>'} {bound_metric} = {bound:.4g}"
    if gate.min is not None and value < gate.min:
        return f"{gate.metric} = {value:.4g} < min {gate.min:.4g}"
    if gate.max is not None and value > gate.max:
        return f"{gate.metric} = {value:.4g} > max {gate.max:.4g}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check one metric of a stage's metrics JSON against bounds.")
    parser.add_argument("--metrics", required=True, type=Path, help="JSON file with a metrics object (eval.json)")
    parser.add_argument("--stage", default=None, help="stage name for messages (default: the file's folder name)")
    parser.add_argument("--metric", required=True)
    parser.add_argument("--min", type=float, default=None)
    parser.add_argument("--max", type=float, default=None)
    args = parser.parse_args(argv)
    stage = args.stage or args.metrics.parent.name
    try:
        metrics = read_metrics(args.metrics)
    except ValueError as err:
        print(f"gate check for stage {stage!r}: {err}", file=sys.stderr)
        return 2
    try:
        check_gate(stage, metrics, {"metric": args.metric, "min": args.min, "max": args.max})
    except (GateFailed, ValueError) as err:
        print(str(err), file=sys.stderr)
        return 1
    print(f"gate passed for stage {stage!r}: {args.metric} = {metrics[args.metric]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
