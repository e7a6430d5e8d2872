import json

import pytest

from train.report import StageResult, discover_stages, load_stage, loss_curves, main, render_markdown, write_report


def _stage(root, name, losses, eval_metrics=None, sub=None, extra=None):
    d = root / name
    run = d / sub if sub else d
    run.mkdir(parents=True)
    with open(run / "metrics.jsonl", "w") as f:
        for i, loss in enumerate(losses):
            f.write(json.dumps({"step": i + 1, "loss": loss, "lr": 1e-3}) + "\n")
    if eval_metrics is not None:
        (d / "eval").mkdir()
        (d / "eval" / "eval.json").write_text(json.dumps(eval_metrics))
    if extra is not None:
        (d / "dpo_heldout.json").write_text(json.dumps(extra))
    return d


def test_write_report_and_rebuild(tmp_path):
    pre = _stage(tmp_path, "pretrain", [5.0, 4.0, 3.5], {"accuracy": 0.01, "perplexity": 40.0})
    sft = _stage(tmp_path, "sft", [2.0, 1.5], {"accuracy": 0.4}, sub="math")
    dpo = _stage(tmp_path, "dpo", [0.69, 0.5], {"accuracy": 0.42},
                 extra={"heldout_reward_margin": 0.8, "heldout_preference_accuracy": 0.9})
    stages = [load_stage(pre), load_stage(sft, gate={"metric": "accuracy", "min": 0.1}), load_stage(dpo)]
    assert stages[2].metrics["heldout_preference_accuracy"] == 0.9
    assert loss_curves(sft) == {"math": ([1.0, 2.0], [2.0, 1.5])}
    report = write_report(tmp_path, stages)
    md = report.read_text()
    assert "| sft | 0.4 |" in md and "passed" in md
    assert "heldout_reward_margin" in md
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert json.loads((tmp_path / "metrics.json").read_text())["pretrain"]["perplexity"] == 40.0

    (tmp_path / "report.md").unlink()
    assert main(["--pipeline-dir", str(tmp_path)]) == 0
    rebuilt = discover_stages(tmp_path)
    assert [s.name for s in rebuilt] == ["pretrain", "sft", "dpo"]
    assert rebuilt[1].gate == {"metric": "accuracy", "min": 0.1}
    assert (tmp_path / "report.md").read_text() == md


def test_failed_gate_shown_in_report(tmp_path):
    d = _stage(tmp_path, "sft", [1.0], {"accuracy": 0.01})
    md = render_markdown([StageResult("sft", d, {"accuracy": 0.01}, {"metric": "accuracy", "min": 0.1})])
    assert "FAILED" in md and "0.01 < min 0.1" in md


def test_bad_inputs_are_named(tmp_path, capsys):
    d = tmp_path / "sft"
    d.mkdir()
    (d / "eval.json").write_text("{not json")
    with pytest.raises(ValueError, match="eval.json: invalid JSON"):
        load_stage(d)
    (d / "eval.json").write_text("{}")
    (d / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n[oops\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: malformed JSON"):
        loss_curves(d)
    assert main(["--pipeline-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _outcomes(stage_dir, correct: dict) -> None:
    (stage_dir / "eval" / "per_problem.jsonl").write_text(
        "".join(json.dumps({"id": pid, "correct": c, "samples": 1}) + "\n" for pid, c in correct.items()))


def test_intervals_and_paired_comparisons(tmp_path):
    ids = [f"heldout-0-{i}" for i in range(100)]
    pre = _stage(tmp_path, "pretrain", [5.0], {"accuracy": 0.0, "num_problems": 100, "perplexity": 600.0,
                                                "unigram_perplexity": 900.0, "blind_baseline_accuracy": 0.2})
    sft = _stage(tmp_path, "sft", [2.0], {"accuracy": 0.3, "num_problems": 100, "blind_baseline_accuracy": 0.2})
    dpo = _stage(tmp_path, "dpo", [0.7], {"accuracy": 0.32, "num_problems": 100, "blind_baseline_accuracy": 0.2})
    _outcomes(pre, {i: 0.0 for i in ids})
    _outcomes(sft, {i: float(n < 30) for n, i in enumerate(ids)})
    _outcomes(dpo, {i: float(n < 28 or 30 <= n < 34) for n, i in enumerate(ids)})  # lost 2, gained 4
    write_report(tmp_path, [load_stage(d) for d in (pre, sft, dpo)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["sft"]["accuracy_ci95"] == pytest.approx([0.2189, 0.3958], abs=1e-4)  # Wilson, 30 of 100
    assert "paired_vs_previous" not in metrics["pretrain"]
    assert metrics["sft"]["paired_vs_previous"]["p_value"] == pytest.approx(2 / 2 ** 30)  # 30 gained, 0 lost
    dpo_vs = metrics["dpo"]["paired_vs_previous"]
    assert dpo_vs["previous"] == "sft" and dpo_vs["test"] == "exact McNemar"
    assert (dpo_vs["lost"], dpo_vs["gained"]) == (2, 4) and dpo_vs["p_value"] == pytest.approx(22 / 32)
    md = (tmp_path / "report.md").read_text()
    assert "| sft | 0.3 [0.219, 0.396] |" in md
    assert "| 600 | 900 |" in md  # the model's perplexity next to the unigram baseline's
    assert "| dpo | sft | 100 | +0.020 |" in md and "| 0.688 | exact McNemar | 2 / 4 |" in md


def test_pairing_different_problems_is_refused(tmp_path, capsys):
    sft = _stage(tmp_path, "sft", [2.0], {"accuracy": 0.5, "num_problems": 2})
    dpo = _stage(tmp_path, "dpo", [0.7], {"accuracy": 0.5, "num_problems": 2})
    _outcomes(sft, {"a": 1.0, "b": 0.0})
    _outcomes(dpo, {"a": 1.0, "c": 0.0})
    with pytest.raises(ValueError, match=r"cannot pair .*sft/eval/per_problem\.jsonl with "
                                         r".*dpo/eval/per_problem\.jsonl: their problem ids differ"):
        write_report(tmp_path, [load_stage(sft), load_stage(dpo)])
    assert main(["--pipeline-dir", str(tmp_path)]) == 2
    assert "problem ids differ" in capsys.readouterr().err


def test_plot_draws_error_bars_and_the_blind_baseline(tmp_path, monkeypatch):
    import matplotlib.axes

    from train.report import render_plot

    drawn = {"bars": [], "lines": []}
    bar, axhline = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.axhline

    def spy_bar(self, x, height, **kw):
        drawn["bars"].append(kw.get("yerr"))
        return bar(self, x, height, **kw)

    def spy_axhline(self, y=0, **kw):
        drawn["lines"].append(y)
        return axhline(self, y, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy_bar)
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", spy_axhline)
    stages = [StageResult("sft", tmp_path, {"accuracy": 0.3, "num_problems": 100, "blind_baseline_accuracy": 0.2})]
    assert render_plot(stages)[:4] == b"\x89PNG"
    low, high = [0.2189, 0.3958]
    assert drawn["bars"][0] == [[pytest.approx(0.3 - low, abs=1e-4)], [pytest.approx(high - 0.3, abs=1e-4)]]
    assert 0.2 in drawn["lines"]
