"""The default run.name (train.runtime.run_name): entry point, recipe and init checkpoint when neither the recipe nor
the command line names the run; a recipe's own name and a command-line name win."""
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.train.builders import REPO, stages_override
from train.config import SFTConfig
from train.runtime.run_name import checkpoint_label, default_run_name, fill_run_name


@pytest.mark.parametrize("init_from,label", [
    ("/models/Phi-4-mini-flash-reasoning", "Phi-4-mini-flash-reasoning"),
    ("/models/Phi-4-mini-flash-reasoning/", "Phi-4-mini-flash-reasoning"),
    ("runs/sft-finetune-Phi-4-mini-flash-reasoning/export", "sft-finetune-Phi-4-mini-flash-reasoning"),
    ("/hf/hub/models--microsoft--Phi-4-mini-flash-reasoning/snapshots/0123abcd", "Phi-4-mini-flash-reasoning"),
])
def test_checkpoint_label(init_from, label):
    assert checkpoint_label(init_from) == label


def test_checkpoint_label_of_the_current_directory_is_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert checkpoint_label(".") == tmp_path.name


def test_default_run_name_says_entry_recipe_and_init():
    assert default_run_name("sft", "finetune", "/m/Phi-4-mini-flash-reasoning") == \
        "sft-finetune-Phi-4-mini-flash-reasoning"
    assert default_run_name("dpo", "finetune", "runs/sft-a/export") == "dpo-finetune-sft-a"
    assert default_run_name("pretrain", "demo", None) == "pretrain-demo"
    assert default_run_name("sft", None, "/m/x") == "sft-x"  # composed in code: no recipe name


def test_fill_run_name_only_when_unset():
    cfg = OmegaConf.structured(SFTConfig)
    cfg.sft.init_from = "/m/Phi-4-mini-flash-reasoning"
    fill_run_name(cfg, "sft", "sft.init_from")
    assert cfg.run.name == "sft-Phi-4-mini-flash-reasoning"
    assert cfg.run.dir == "runs/sft-Phi-4-mini-flash-reasoning"  # the default directory follows the name
    cfg.run.name = "mine"
    fill_run_name(cfg, "sft", "sft.init_from")
    assert cfg.run.name == "mine"
    unset = OmegaConf.structured(SFTConfig)  # sft.init_from unset too
    fill_run_name(unset, "sft", "sft.init_from")
    assert unset.run.name == "sft"


def _dry_run_names(sft_setup, tmp_path, *overrides):
    """The run names a dry run of the demo SFT recipe prints, one per stage."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "train.sft", "--config-name", "demo", f"sft.init_from={sft_setup['init']}",
                        stages_override(sft_setup["a"], sft_setup["b"]), "data.global_batch_tokens=192",
                        "data.micro_batch_rows=2", "trainer.dry_run=true", *overrides],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(line)["dry_run"]["run_name"] for line in p.stdout.splitlines() if line.startswith('{"dry_run"')]


def test_cli_derives_the_name_from_the_recipe_and_init(sft_setup, tmp_path):
    """Through Hydra (the recipe name comes from ``--config-name``): ``run.name=???`` stands for a recipe without
    a name (a named recipe keeps its name: test_fill_run_name_only_when_unset)."""
    init = sft_setup["init"].name
    assert _dry_run_names(sft_setup, tmp_path, "run.name=???") == [f"sft-demo-{init}/one", f"sft-demo-{init}/two"]
