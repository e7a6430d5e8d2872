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
