"""train.sft on your own chat data (sft.train_data): the one stage built from the sft.* keys in run.dir itself, the
data cache beside the run, the finetune recipe's keys, and the errors naming keys. The run itself, from a hub-style
snapshot, is in test_sft_finetune_e2e.py."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from train.config import register_sft_schema

REPO = Path(__file__).resolve().parents[2]


def compose_finetune(overrides, recipe="finetune"):
    register_sft_schema()
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "sft"), version_base=None):
        return OmegaConf.to_object(compose(config_name=recipe, overrides=["run.name=t", *overrides]))


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    recs = [{"messages": [{"role": "user", "content": f"line {i}"}, {"role": "assistant", "content": f"{i * 5}"}]}
            for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def overrides(sft_setup, chat_file, run_dir, *extra):
    return [f"sft.init_from={sft_setup['init']}", f"sft.train_data={chat_file}", f"run.dir={run_dir}",
            "sft.seq_len=32", "data.global_batch_tokens=64", *extra]


def test_the_recipe_needs_init_and_data_and_takes_the_contract_keys(sft_setup, chat_file, tmp_path):
    with pytest.raises(MissingMandatoryValue, match="init_from"):
        compose_finetune([f"sft.train_data={chat_file}"])
    from train.sft import stage_list

    with pytest.raises(ValueError, match="sft.train_data is not set: set sft.train_data=DATA"):
        stage_list(compose_finetune([f"sft.init_from={sft_setup['init']}"]))
    cfg = compose_finetune(overrides(sft_setup, chat_file, tmp_path, "sft.lr=3e-4", "sft.epochs=2",
                                     "trainer.max_steps=5", f"sft.train_data=[{chat_file},{chat_file}]"))
    assert cfg.sft.train_data == [str(chat_file)] * 2 and cfg.sft.lr == 3e-4 and cfg.trainer.max_steps == 5
    assert cfg.sft.stages == [] and cfg.deepspeed.zero_stage == 2


def test_stages_and_train_data_together_are_refused_naming_both(sft_setup, chat_file, tmp_path):
    from tests.train.builders import base_overrides

    with pytest.raises(Exception, match="sft.stages and sft.train_data are both set"):
        compose_finetune(base_overrides(sft_setup, tmp_path) + [f"sft.train_data={chat_file}"], recipe="demo")


def test_one_stage_in_run_dir_from_the_sft_keys(sft_setup, chat_file, tmp_path):
    import contextlib

    from train.sft import FINETUNE_STAGE, build_finetune_spec

    cfg = compose_finetune(overrides(sft_setup, chat_file, tmp_path / "run", "sft.lr=3e-4", "sft.epochs=2",
                                     "trainer.max_steps=5", "sft.eval_fraction=0.2"))
    with contextlib.ExitStack() as scratch:
        spec = build_finetune_spec(cfg, "", {}, dry_run=False, scratch=scratch)
    assert spec.run_dir == tmp_path / "run" and spec.tokenizer_dir == sft_setup["init"]
    assert spec.optim.lr == 3e-4 and spec.data.seq_len == 32 and spec.split_documents is False
    assert spec.trainer.epochs == 2 and spec.trainer.max_steps == 5  # trainer.max_steps caps the epochs
    assert f"sft:{FINETUNE_STAGE}" in spec.wandb.tags
    (cache,) = [Path(s.path) for s in spec.data.sources]
    assert cache.parent == tmp_path / "run" / "data"
    splits = spec.data_manifests[0]["manifest"]["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 30 and splits["val"]["documents"] >= 1


def test_dry_run_checks_the_data_and_writes_nothing(sft_setup, chat_file, tmp_path):
    from train.sft import run

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    register_sft_schema()
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "sft"), version_base=None):
        good = compose(config_name="finetune", overrides=overrides(sft_setup, chat_file, tmp_path / "r",
                                                                   "trainer.dry_run=true"))
        wrong = compose(config_name="finetune", overrides=overrides(sft_setup, bad, tmp_path / "r",
                                                                    "trainer.dry_run=true"))
    assert run(good) == 0
    with pytest.raises(ValueError, match="bad.jsonl: record 1: conversation has no assistant message"):
        run(wrong)
    assert not (tmp_path / "r").exists()


def test_missing_init_or_data_name_the_key(sft_setup, chat_file, tmp_path):
    import contextlib

    from train.sft import build_finetune_spec

    cfg = compose_finetune(overrides(sft_setup, tmp_path / "nope.jsonl", tmp_path / "r"))
    with pytest.raises(FileNotFoundError, match="sft.train_data: .*nope.jsonl"), contextlib.ExitStack() as s:
        build_finetune_spec(cfg, "", {}, dry_run=False, scratch=s)
    cfg = compose_finetune(overrides(sft_setup, chat_file, tmp_path / "r", f"sft.init_from={tmp_path / 'none'}"))
    with pytest.raises(FileNotFoundError, match="sft.init_from: .*none"), contextlib.ExitStack() as s:
        build_finetune_spec(cfg, "", {}, dry_run=False, scratch=s)
