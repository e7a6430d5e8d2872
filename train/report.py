"""Pipeline report: per-stage metric tables (Markdown), loss curves and accuracy per stage (PNG).

Expected layout of a pipeline directory (one sub-directory per stage, named after the stage):

    <pipeline_dir>/
      stages.json                  optional: pipeline order and gates, [{"name": "sft", "gate": {...}|null}, ...]
                                   (plain names also accepted; written by write_report; without it, stage
                                   dirs are ordered by creation time)
      <stage>/                     a stage's run dir (train.pretrain / train.sft / train.dpo run.dir)
        metrics.jsonl              training curve, one JSON object per log step with "step" and "loss";
                                   nested run dirs (SFT sub-stages: <stage>/<sub>/metrics.jsonl) are found too
        eval.json                  evaluation metrics of the stage's output model (train.evaluate), or
        eval/eval.json             the same under an ``eval/`` output dir
        [eval/]per_problem.jsonl   beside eval.json: each problem's pass@1 (train.evaluate), for the paired tests
        dpo_heldout.json           DPO only: held-out reward margin / preference accuracy
      report.md, report.png        written here
      metrics.json                 {stage: metrics} of all stages (written here)

A stage's metrics dict is eval.json merged with dpo_heldout.json (eval.json wins on equal keys). The report
gives every accuracy its 95% Wilson interval (``<metric>_ci95``) and compares each stage's per-problem outcomes
with the previous evaluated stage's on the same problems (``paired_vs_previous``: difference, its 95% interval
and the p-value of exact McNemar for k = 1 or of a paired bootstrap for k > 1; see ``train.evals.stats``).

    python -m train.report --pipeline-dir runs/pipeline_demo
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from data.atomic import atomic_write_bytes, atomic_write_text
from data.jsonl import read_jsonl
from train.runtime.results_io import read_json, read_metrics, write_json
from train.evals.gates import Gate, GateFailed, check_gate
from train.evals.stats import CI_SUFFIX, PER_PROBLEM_FILE, compare_outcomes, load_outcomes, with_intervals

EVAL_FILES = ("eval.json", "eval/eval.json", "dpo_heldout.json")
# Metrics shown in the cross-stage summary table, in this order, when any stage reports them.
SUMMARY_METRICS = ("accuracy", "blind_baseline_accuracy", "extracted_fraction", "perplexity", "unigram_perplexity",
                   "retrieval_accuracy", "heldout_reward_margin", "heldout_preference_accuracy")
PAIRED_KEY = "paired_vs_previous"  # a stage's paired comparison in metrics.json


@dataclass
class StageResult:
    """One stage of a pipeline run.

    name: stage name (also its sub-directory of the pipeline dir).
    run_dir: the stage's directory; curves are read from its metrics.jsonl files.
    metrics: the stage's evaluation metrics (default: empty).
    gate: the declared gate (``Gate`` or a ``{metric, min, max}`` mapping), None (default) = no gate.
    eval_dir: the folder of its eval.json, where per_problem.jsonl is looked for (default None = none).
    comparison: its paired comparison with the previous evaluated stage (:func:`annotate`; default None).
    """

    name: str
    run_dir: Path
    metrics: dict = field(default_factory=dict)
    gate: Gate | dict | None = None
    eval_dir: Path | None = None
    comparison: dict | None = None

    def gate_metrics(self) -> dict:
        """What the gate reads: the metrics plus the paired comparison under :data:`PAIRED_KEY` (when any)."""
        return {**self.metrics, **({PAIRED_KEY: self.comparison} if self.comparison else {})}

    def gate_status(self) -> str:
        if self.gate is None:
            return "none"
        try:
            check_gate(self.name, self.gate_metrics(), self.gate)
        except GateFailed as err:
            return f"FAILED ({err})"
        return "passed"


def load_stage(run_dir: str | Path, name: str | None = None, gate=None) -> StageResult:
    """Build a StageResult from a stage directory laid out as in this module's docstring."""
    run_dir = Path(run_dir)
    metrics: dict = {}
    eval_dir = None
    for rel in reversed(EVAL_FILES):  # later (eval.json) entries override earlier ones
        if (run_dir / rel).is_file():
            metrics.update(read_metrics(run_dir / rel))
            if rel.endswith("eval.json"):
                eval_dir = (run_dir / rel).parent
    return StageResult(name=name or run_dir.name, run_dir=run_dir, metrics=metrics, gate=gate, eval_dir=eval_dir)


def annotate(stages: list[StageResult]) -> list[StageResult]:
    """Copies of ``stages`` with 95% intervals in their metrics and, for each stage with per-problem outcomes, its
    paired comparison with the previous such stage (a stage without them is skipped, e.g. one with math off).

    Raises ValueError naming both files when two consecutive evaluations scored different problems.
    """
    out, previous = [], None
    for s in stages:
        path = s.eval_dir / PER_PROBLEM_FILE if s.eval_dir is not None else None
        comparison = None
        if path is not None and path.is_file():
            outcomes = load_outcomes(path)
            if previous is not None:
                prev_name, prev_path, prev_outcomes = previous
                comparison = {"previous": prev_name,
                              **compare_outcomes(prev_outcomes, outcomes, str(prev_path), str(path))}
            previous = (s.name, path, outcomes)
        out.append(replace(s, metrics=with_intervals(s.metrics), comparison=comparison))
    return out


def loss_curves(run_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    """{label: (steps, losses)} for every metrics.jsonl under ``run_dir`` (label = its relative folder)."""
    curves = {}
    for path in sorted(run_dir.rglob("metrics.jsonl")):
        steps, losses = [], []
        for rec in read_jsonl(path):
            if "step" in rec and isinstance(rec.get("loss"), (int, float)) and math.isfinite(rec["loss"]):
                steps.append(float(rec["step"]))
                losses.append(float(rec["loss"]))
        if steps:
            rel = path.parent.relative_to(run_dir)
            curves[str(rel) if str(rel) != "." else ""] = (steps, losses)
    return curves


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _with_ci(metrics: dict, key: str) -> str:
    """A summary cell: the value, and its 95% interval when it has one."""
    if key not in metrics:
        return ""
    ci = metrics.get(key + CI_SUFFIX)
    return _fmt(metrics[key]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _paired_table(stages: list[StageResult]) -> list[str]:
    """The paired comparisons of consecutive evaluations (Markdown lines; none when no stage has one)."""
    rows = [s for s in stages if s.comparison]
    if not rows:
        return []
    lines = ["## Paired comparisons", "",
             "Each stage against the previous evaluated stage on the same problems: accuracy difference (this stage "
             "minus the previous), its 95% paired-bootstrap interval, and the p-value (exact McNemar for k = 1, "
             "paired bootstrap for k > 1).", "",
             "| stage | vs | problems | difference | 95% interval | p-value | test | lost / gained |",
             "|---|---|---|---|---|---|---|---|"]
    for s in rows:
        c = s.comparison
        lo, hi = c["difference_ci95"]
        moved = f"{c['lost']} / {c['gained']}" if "lost" in c else ""
        lines.append(f"| {s.name} | {c['previous']} | {c['n']} | {c['difference']:+.3f} | [{lo:+.3f}, {hi:+.3f}] "
                     f"| {c['p_value']:.3g} | {c['test']} | {moved} |")
    return lines + [""]


def render_markdown(stages: list[StageResult], plot_name: str = "report.png") -> str:
    """report.md of ``stages`` (intervals added here when :func:`annotate` has not added them)."""
    stages = [replace(s, metrics=with_intervals(s.metrics)) for s in stages]
    lines = ["# Pipeline report", ""]
    present = [m for m in SUMMARY_METRICS if any(m in s.metrics for s in stages)]
    if present:
        lines += ["## Summary", "", "Accuracies with their 95% Wilson interval in brackets.", "",
                  "| stage | " + " | ".join(present) + " | gate |", "|---|" + "---|" * len(present) + "---|"]
        for s in stages:
            cells = [_with_ci(s.metrics, m) for m in present]
            lines.append(f"| {s.name} | " + " | ".join(cells) + f" | {s.gate_status()} |")
        lines.append("")
    lines += _paired_table(stages)
    lines += [f"![loss curves and accuracy per stage]({plot_name})", ""]
    for s in stages:
        lines += [f"## {s.name}", "", f"run dir: `{s.run_dir}`", f"gate: {s.gate_status()}", ""]
        scalar = {k: v for k, v in s.metrics.items() if not isinstance(v, (dict, list))}
        nested = {k: v for k, v in s.metrics.items() if isinstance(v, (dict, list))}
        if scalar:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(scalar.items())]
        else:
            lines.append("(no evaluation metrics)")
        for k, v in sorted(nested.items()):
            lines += ["", f"`{k}`: {_fmt(v)}"]
        curves = loss_curves(s.run_dir)
        if curves:
            lines += ["", "| curve | steps | first loss | last loss |", "|---|---|---|---|"]
            for label, (steps, losses) in curves.items():
                lines.append(f"| {label or s.name} | {int(steps[-1])} | {losses[0]:.4g} | {losses[-1]:.4g} |")
        lines.append("")
    return "\n".join(lines)


def _bars(ax, names: list[str], values: list[float], title: str, ylabel: str, ylim=None, errors=None) -> None:
    """Bars of ``values``; ``errors``: [[below...], [above...]] of each bar's interval (matplotlib's yerr)."""
    ax.bar(names, values, color="tab:blue", yerr=errors, capsize=4 if errors else 0, ecolor="black")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)


def _metric_series(stages: list[StageResult], key: str) -> tuple[list[str], list[float]]:
    pairs = [(s.name, float(s.metrics[key])) for s in stages
             if isinstance(s.metrics.get(key), (int, float)) and not isinstance(s.metrics.get(key), bool)]
    return [n for n, _ in pairs], [v for _, v in pairs]


def _interval_errors(stages: list[StageResult], key: str) -> list[list[float]] | None:
    """yerr of the bars of :func:`_metric_series` (``key``): distances to each interval's ends; None when a bar has
    no interval."""
    below, above = [], []
    for s in stages:
        value = s.metrics.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        ci = with_intervals(s.metrics).get(key + CI_SUFFIX)
        if ci is None:
            return None
        below.append(max(0.0, value - ci[0]))
        above.append(max(0.0, ci[1] - value))
    return [below, above] if below else None


def _baseline(ax, stages: list[StageResult]) -> None:
    """A horizontal line at the blind baseline (guessing by problem family), when the stages report one."""
    values = sorted({float(s.metrics["blind_baseline_accuracy"]) for s in stages
                     if isinstance(s.metrics.get("blind_baseline_accuracy"), (int, float))})
    if not values:
        return
    # One line per distinct value: stages evaluated on other problems have their own baseline.
    for v in values:
        ax.axhline(v, color="tab:red", linestyle="--", linewidth=1)
    ax.plot([], [], color="tab:red", linestyle="--", label="blind baseline " + ", ".join(f"{v:.3f}" for v in values))
    ax.legend(fontsize=8, loc="upper left")


def render_plot(stages: list[StageResult]) -> bytes:
    import matplotlib  # local: a ~0.5 s import that only the report figure needs


    matplotlib.use("Agg")  # headless: clusters and CI have no display
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import

    fig, (ax_loss, ax_acc, ax_pref) = plt.subplots(1, 3, figsize=(16, 4.5))
    # Stages run one after another: draw each curve after the previous one so the x axis reads as pipeline time.
    offset = 0.0
    for s in stages:
        for label, (steps, losses) in loss_curves(s.run_dir).items():
            ax_loss.plot([offset + x for x in steps], losses, label=f"{s.name}/{label}" if label else s.name)
            offset += steps[-1]
            ax_loss.axvline(offset, color="0.85", linewidth=0.8)
    ax_loss.set_xlabel("optimizer step (stages in order)")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("loss curves")
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(fontsize=8)
    names, values = _metric_series(stages, "accuracy")
    _bars(ax_acc, names, values, "held-out math accuracy per stage (95% Wilson)", "pass@1", (0, 1),
          _interval_errors(stages, "accuracy"))
    _baseline(ax_acc, stages)
    names, values = _metric_series(stages, "heldout_preference_accuracy")
    _bars(ax_pref, names, values, "held-out preference accuracy (DPO)", "reward(chosen) > reward(rejected)", (0, 1))
    margins = _metric_series(stages, "heldout_reward_margin")[1]
    for i, m in enumerate(margins[:len(names)]):
        ax_pref.text(i, 0.02, f"margin {m:.3g}", ha="center", va="bottom", fontsize=8, color="white")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(pipeline_dir: str | Path, stages: list[StageResult]) -> Path:
    """Write report.md, report.png, metrics.json and stages.json into ``pipeline_dir``; return report.md.

    Every accuracy gets its 95% interval and every stage its paired comparison (:func:`annotate`, which refuses
    evaluations of different problems). The report is a derived artifact: rebuilding it replaces the previous one
    (atomically).
    """
    pipeline_dir = Path(pipeline_dir)
    stages = annotate(stages)
    atomic_write_bytes(pipeline_dir / "report.png", render_plot(stages), overwrite=True)
    write_json(pipeline_dir / "metrics.json",
               {s.name: s.gate_metrics() for s in stages},
               overwrite=True)
    write_json(pipeline_dir / "stages.json", [{"name": s.name, "gate": _gate_dict(s.gate)} for s in stages],
               overwrite=True)
    atomic_write_text(pipeline_dir / "report.md", render_markdown(stages), overwrite=True)
    return pipeline_dir / "report.md"


def _gate_dict(gate: Gate | dict | None) -> dict | None:
    if isinstance(gate, Gate):
        return asdict(gate)
    return None if gate is None else dict(gate)


def discover_stages(pipeline_dir: str | Path) -> list[StageResult]:
    """Stages of a pipeline directory, in the order of stages.json, else by directory creation time."""
    pipeline_dir = Path(pipeline_dir)
    if not pipeline_dir.is_dir():
        raise FileNotFoundError(f"pipeline dir {pipeline_dir} does not exist")
    if (pipeline_dir / "stages.json").is_file():
        specs = _stage_specs(pipeline_dir / "stages.json")
        missing = [n for n, _ in specs if not (pipeline_dir / n).is_dir()]
        if missing:
            raise FileNotFoundError(f"{pipeline_dir / 'stages.json'} lists stages with no directory: {missing}")
        return [load_stage(pipeline_dir / n, name=n, gate=g) for n, g in specs]
    dirs = sorted(
        (d for d in pipeline_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
         and (any(d.rglob("metrics.jsonl")) or any((d / f).is_file() for f in EVAL_FILES))),
        key=lambda d: (d.stat().st_ctime, d.name),
    )
    return [load_stage(d) for d in dirs]


def _stage_specs(order_file: Path) -> list[tuple[str, dict | None]]:
    """(name, gate) of each entry of a stages.json (entries are names or ``{name, gate}`` objects)."""
    entries = read_json(order_file)
    if not isinstance(entries, list):
        raise ValueError(f"{order_file}: expected a JSON list of stages")
    specs = []
    for i, entry in enumerate(entries):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{order_file}: entry {i} must be a stage name or {{name, gate}}, got {entry!r}")
        specs.append((entry["name"], entry.get("gate")))
    return specs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild report.md/report.png from a pipeline's stage dirs.")
    parser.add_argument("--pipeline-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        stages = discover_stages(args.pipeline_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not stages:
        print(f"error: no stage directories with metrics under {args.pipeline_dir}", file=sys.stderr)
        return 2
    try:
        path = write_report(args.pipeline_dir, stages)
    except ValueError as err:  # e.g. two evaluations of different problems cannot be paired
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path.with_suffix('.png')} ({len(stages)} stages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
