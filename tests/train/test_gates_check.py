import json
import subprocess
import sys

import pytest

from train.evals.gates import Gate, GateFailed, check_gate, main


def test_gate_passes_at_and_above_min():
    check_gate("sft", {"accuracy": 0.1}, {"metric": "accuracy", "min": 0.1})
    check_gate("sft", {"accuracy": 0.5}, Gate("accuracy", min=0.1))
    check_gate("sft", {"accuracy": 0.0}, None)


def test_gate_fails_below_min_with_clear_message():
    with pytest.raises(GateFailed, match=r"stage 'sft'.*accuracy = 0.05 < min 0.1"):
        check_gate("sft", {"accuracy": 0.05}, {"metric": "accuracy", "min": 0.1})


def test_gate_max_bound():
    with pytest.raises(GateFailed, match="perplexity = 120 > max 100"):
        check_gate("pretrain", {"perplexity": 120.0}, {"metric": "perplexity", "max": 100})


def test_missing_or_nan_metric_fails():
    with pytest.raises(GateFailed, match="'accuracy' was not reported"):
        check_gate("dpo", {"loss": 1.0}, {"metric": "accuracy", "min": 0.1})
    with pytest.raises(GateFailed, match="not a number"):
        check_gate("dpo", {"accuracy": float("nan")}, {"metric": "accuracy", "min": 0.1})


def test_bad_gate_spec_names_key():
    with pytest.raises(ValueError, match="unknown key.*minimum"):
        check_gate("sft", {"accuracy": 1.0}, {"metric": "accuracy", "minimum": 0.1})
    with pytest.raises(ValueError, match="at least one of min, max, min_metric, max_metric"):
        check_gate("sft", {"accuracy": 1.0}, {"metric": "accuracy"})
    with pytest.raises(ValueError, match="'min_metric' must name a metric"):
        check_gate("sft", {"accuracy": 1.0}, {"metric": "accuracy", "min_metric": 0.2})


def test_a_bound_can_be_another_metric():
    metrics = {"perplexity": 630.0, "unigram_perplexity": 930.0}
    check_gate("pretrain", metrics, {"metric": "perplexity", "max_metric": "unigram_perplexity"})
    with pytest.raises(GateFailed, match="perplexity = 4100 > unigram_perplexity = 930"):
        check_gate("pretrain", {**metrics, "perplexity": 4100.0},
                   {"metric": "perplexity", "max_metric": "unigram_perplexity"})
    with pytest.raises(GateFailed, match="'unigram' was not reported"):
        check_gate("pretrain", metrics, {"metric": "perplexity", "max_metric": "unigram"})


def test_a_metric_can_be_a_path_into_nested_results():
    sft = {"accuracy_ci95": [0.40, 0.49], "blind_baseline_accuracy": 0.21}
    check_gate("sft", sft, {"metric": "accuracy_ci95.0", "min_metric": "blind_baseline_accuracy"})
    with pytest.raises(GateFailed, match=r"accuracy_ci95.0 = 0.18 < blind_baseline_accuracy = 0.21"):
        check_gate("sft", {**sft, "accuracy_ci95": [0.18, 0.26]},
                   {"metric": "accuracy_ci95.0", "min_metric": "blind_baseline_accuracy"})
    dpo = {"paired_vs_previous": {"difference": -0.06, "difference_ci95": [-0.09, -0.03]}}
    with pytest.raises(GateFailed, match=r"paired_vs_previous.difference_ci95.1 = -0.03 < min 0"):
        check_gate("dpo", dpo, {"metric": "paired_vs_previous.difference_ci95.1", "min": 0.0})
    with pytest.raises(GateFailed, match=r"'paired_vs_previous.p_value' was not reported \(at 'p_value'"):
        check_gate("dpo", dpo, {"metric": "paired_vs_previous.p_value", "max": 0.05})
    with pytest.raises(GateFailed, match=r"'accuracy_ci95.2' was not reported"):
        check_gate("sft", sft, {"metric": "accuracy_ci95.2", "min": 0.0})


def test_cli_exit_codes(tmp_path, capsys):
    path = tmp_path / "sft" / "eval.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"accuracy": 0.05}))
    assert main(["--metrics", str(path), "--metric", "accuracy", "--min", "0.1"]) == 1
    assert "gate failed for stage 'sft'" in capsys.readouterr().err
    assert main(["--metrics", str(path), "--metric", "accuracy", "--min", "0.01"]) == 0
    path.write_text("[0.5]")
    assert main(["--metrics", str(path), "--metric", "accuracy", "--min", "0.01"]) == 2
    assert f"{path}: expected a JSON object" in capsys.readouterr().err
    assert main(["--metrics", str(tmp_path / "missing.json"), "--metric", "accuracy", "--min", "0.01"]) == 2
    assert "missing.json: cannot read" in capsys.readouterr().err


def test_cli_module_nonzero_exit(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"accuracy": 0.0}))
    proc = subprocess.run([sys.executable, "-m", "train.evals.gates", "--metrics", str(path), "--stage", "sft",
                           "--metric", "accuracy", "--min", "0.1"], capture_output=True, text=True)
    assert proc.returncode == 1 and "gate failed for stage 'sft'" in proc.stderr
