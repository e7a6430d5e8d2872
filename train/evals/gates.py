"""Quality gates between pipeline stages.

A stage may declare in the pipeline recipe the minimum (and/or maximum) a metric of its evaluation must
reach, e.g. ``gate: {metric: accuracy, min: 0.1}``. ``check_gate`` raises ``GateFailed`` with a message that
names the stage, the metric, its value and the bound; the CLI turns that into exit status 1:

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


@dataclass(frozen=True)
class Gate:
    """Bounds one metric must satisfy.

    metric: key in the stage's metrics dict (no default: required).
    min: inclusive lower bound; None (default) = no lower bound.
    max: inclusive upper bound; None (default) = no upper bound (e.g. for perplexity).
    """

    metric: str
    min: float | None = None
    max: float | None = None

    @classmethod
    def from_mapping(cls, spec: Mapping, where: str = "gate") -> Gate:
        unknown = set(spec) - {"metric", "min", "max"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: metric, min, max")
        if not isinstance(spec.get("metric"), str) or not spec["metric"]:
            raise ValueError(f"{where}: 'metric' must be a non-empty string, got {spec.get('metric')!r}")
        bounds = {}
        for key in ("min", "max"):
            value = spec.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{where}: '{key}' must be a number, got {value!r}")
            bounds[key] = None if value is None else float(value)
        if bounds["min"] is None and bounds["max"] is None:
            raise ValueError(f"{where}: declare at least one of 'min' or 'max' for metric {spec['metric']!r}")
        return cls(metric=spec["metric"], **bounds)


def check_gate(stage_name: str, metrics: Mapping, gate: Gate | Mapping | None) -> None:
    """Raise ``GateFailed`` unless ``metrics[gate.metric]`` lies within the gate's bounds (None = no gate)."""
    if gate is None:
        return
    if not isinstance(gate, Gate):
        gate = Gate.from_mapping(gate, where=f"stage {stage_name!r} gate")
    problem = _gate_problem(gate, metrics)
    if problem is not None:
        raise GateFailed(f"gate failed for stage {stage_name!r}: {problem}")


def _gate_problem(gate: Gate, metrics: Mapping) -> str | None:
    """Why ``metrics`` miss ``gate``, or None when they satisfy it."""
    if gate.metric not in metrics:
        return f"metric {gate.metric!r} was not reported (available: {sorted(metrics)})"
    value = metrics[gate.metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return f"metric {gate.metric!r} is {value!r}, not a number"
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
