"""The demo's gates fail when a stage is broken on purpose (issue 22, item 3).

Each test runs the few-step `smoke` pipeline (its small evaluations) with the demo's own gate on the broken stage's
evaluation, breaks that stage (a zero learning rate: the stage then hands on the model it started from) and checks
that the pipeline stops at that gate with the gate's message. That healthy runs pass the same
gates is shown by the demo's seeds (docs/results.md); the DPO gate's break (chosen and rejected swapped) needs a
model that already solves problems, which takes the demo's ~10 minutes of SFT to train, so it is measured there.
"""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from scripts import pipeline
from scripts.pipeline_config import PipelineConfig
from train.evals.gates import GateFailed

REPO = Path(__file__).resolve().parents[2]

# Reads (and, in a fresh clone, prepares) artifacts/data/demo, as the README demo test does: one xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo_data")]


def recipe(name: str, overrides: list[str]) -> PipelineConfig:
    pipeline.register_pipeline_schema()
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "pipeline"), version_base=None):
        return pipeline.to_config(compose(config_name=name, overrides=overrides))


def broken_smoke(tmp_path: Path, gated: str, breaks: dict[str, dict]) -> PipelineConfig:
    """The smoke pipeline up to the evaluation ``gated``, which gets the demo's gate, with ``breaks`` ({stage:
    overrides}) added to the stages they break."""
    demo = recipe("demo", [])
    stages = list(demo.stages)
    cfg = recipe("smoke", [f"run_dir={tmp_path / 'run'}", f"only=[{','.join(stages[:stages.index(gated) + 1])}]"])
    assert demo.stages[gated].gate, f"the demo declares no gate on {gated}"
    cfg.stages[gated].gate = demo.stages[gated].gate
    for name, overrides in breaks.items():
        cfg.stages[name].overrides.update(overrides)
    return cfg


def test_pretraining_at_a_zero_learning_rate_fails_the_pretraining_gate(tmp_path):
    cfg = broken_smoke(tmp_path, "eval_pretrain", {"pretrain": {"optim.lr": 0.0}})
    with pytest.raises(GateFailed, match=r"stage 'pretrain'.*perplexity = \S+ > unigram_perplexity = "):
        pipeline.run_pipeline(cfg)
    assert "FAILED" in (Path(cfg.run_dir) / "report.md").read_text()


def test_sft_at_a_zero_learning_rate_fails_the_sft_gate(tmp_path):
    zero = {f"sft.stages.{i}.lr": 0.0 for i in range(2)}
    cfg = broken_smoke(tmp_path, "eval_sft_math", {"sft_basic": zero, "sft_math": zero})
    with pytest.raises(GateFailed, match=r"stage 'sft_math'.*accuracy_ci95.0 = 0 < blind_baseline_accuracy = "):
        pipeline.run_pipeline(cfg)
