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
        dpo_heldout.json           DPO only: held-out reward margin / preference accuracy
      report.md, report.png        written here
      metrics.json                 {stage: metrics} of all stages (written here)

A stage's metrics dict is eval.json merged with dpo_heldout.json (eval.json wins on equal keys).

    python -m train.report --pipeline-dir runs/pipeline_demo
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data.atomic import atomic_write_bytes, atomic_write_text
from data.jsonl import read_jsonl
from train.runtime.results_io import read_json, read_metrics, write_json
from train.evals.gates import Gate, GateFailed, check_gate

EVAL_FILES = ("eval.json", "eval/eval.json", "dpo_heldout.json")
# Metrics shown in the cross-stage summary table, in this order, when any stage reports them.
SUMMARY_METRICS = ("accuracy", "blind_baseline_accuracy", "extracted_fraction", "perplexity", "retrieval_accuracy",
                   "heldout_reward_margin", "heldout_preference_accuracy")


@dataclass
class StageResult:
    """One stage of a pipeline run.

    name: stage name (also its sub-directory of the pipeline dir).
    run_dir: the stage's directory; curves are read from its metrics.jsonl files.
    metrics: the stage's evaluation metrics (default: empty).
    gate: the declared gate (``Gate`` or a ``{metric, min, max}`` mapping), None (default) = no gate.
    """

    name: str
    run_dir: Path
    metrics: dict = field(default_factory=dict)
    gate: Gate | dict | None = None

    def gate_status(self) -> str:
        if self.gate is None:
            return "none"
        try:
            check_gate(self.name, self.metrics, self.gate)
        except GateFailed as err:
            return f"FAILED ({err})"
        return "passed"


def load_stage(run_dir: str | Path, name: str | None = None, gate=None) -> StageResult:
    """Build a StageResult from a stage directory laid out as in this module's docstring."""
    run_dir = Path(run_dir)
    metrics: dict = {}
    for rel in reversed(EVAL_FILES):  # later (eval.json) entries override earlier ones
        if (run_dir / rel).is_file():
            metrics.update(read_metrics(run_dir / rel))
    return StageResult(name=name or run_dir.name, run_dir=run_dir, metrics=metrics, gate=gate)


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


def render_markdown(stages: list[StageResult], plot_name: str = "report.png") -> str:
    lines = ["# Pipeline report", ""]
    present = [m for m in SUMMARY_METRICS if any(m in s.metrics for s in stages)]
    if present:
        lines += ["## Summary", "", "| stage | " + " | ".join(present) + " | gate |",
                  "|---|" + "---|" * len(present) + "---|"]
        for s in stages:
            cells = [_fmt(s.metrics[m]) if m in s.metrics else "" for m in present]
            lines.append(f"| {s.name} | " + " | ".join(cells) + f" | {s.gate_status()} |")
        lines.append("")
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


def _bars(ax, names: list[str], values: list[float], title: str, ylabel: str, ylim=None) -> None:
    ax.bar(names, values, color="tab:blue")
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
    _bars(ax_acc, *_metric_series(stages, "accuracy"), "held-out math accuracy per stage", "pass@1", (0, 1))
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

    The report is a derived artifact: rebuilding it replaces the previous one (atomically).
    """
    pipeline_dir = Path(pipeline_dir)
    atomic_write_bytes(pipeline_dir / "report.png", render_plot(stages), overwrite=True)
    write_json(pipeline_dir / "metrics.json", {s.name: s.metrics for s in stages}, overwrite=True)
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
    path = write_report(args.pipeline_dir, stages)
    print(f"wrote {path} and {path.with_suffix('.png')} ({len(stages)} stages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
