"""Dry-run EVERY recipe in recipes/ (prepare, pretrain, sft, dpo, evaluate, and each stage of each pipeline) in
process against a tiny prepared data directory: each must exit 0 and write nothing (the working directory is an
empty tmp dir the test watches), and a missing data path must fail naming the path."""
import importlib
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from data.layout import PreparedData
from data.prepare_config import SFTStageData
from data.prepare_config import register_prepare_schema
from scripts.pipeline import DRY_RUN_OVERRIDES, selected_stages, stage_args, to_config
from scripts.pipeline_config import register_pipeline_schema
from train.config import register_pretrain_schema, register_sft_schema
from train.alignment.dpo_config import register_dpo_schema
from train.evals.evaluate_config import register_evaluate_schema

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
ENTRIES = {"prepare": "data.prepare", "pretrain": "train.pretrain", "sft": "train.sft", "dpo": "train.dpo",
           "evaluate": "train.evaluate"}
# Stage names of every SFT recipe, and the extra shard set of recipes/data/web_mix.yaml.
SFT_STAGES = ("basic", "math", "distill", "long_cot")


def _register():
    for register in (register_pretrain_schema, register_sft_schema, register_dpo_schema, register_evaluate_schema,
                     register_prepare_schema, register_pipeline_schema):
        register()


def _compose(entry_dir: str, name: str, overrides: list[str]):
    _register()
    with initialize_config_dir(config_dir=str(RECIPES / entry_dir), version_base=None):
        return compose(config_name=name, overrides=overrides)


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A prepared data directory made by data.prepare itself (tiny sizes) and a tiny export made with its tokenizer."""
    from data.prepare import prepare
    from data.tokenizer import load_tokenizer
    from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
    from train.runtime.export import save_export

    root = tmp_path_factory.mktemp("recipes_dryrun")
    text = root / "corpus.jsonl"  # one document per line, so that the shard sets get a val split
    text.write_text("".join(json.dumps({"text": f"Document {i}: {i} plus {i + 1} is {2 * i + 1}. " * 8}) + "\n"
                            for i in range(60)))
    cfg = _compose("prepare", "demo", [
        f"out_dir={root / 'data'}", f"corpus.files=[{text}]", "tokenizer.vocab_size=320", "reasoning.n_train=40",
        "reasoning.n_heldout=12", "preference.n_train=20", "preference.n_heldout=8", "num_proc=1",
        "pretrain.val_fraction=0.2", f"extra_pretrain=[{{name:code,corpus:{{files:[{text}]}},val_fraction:0.2}}]"])
    cfg.sft = [SFTStageData(name=s, n_examples=30, val_fraction=0.2) for s in SFT_STAGES]  # `sft=` names a group
    data = prepare(cfg)
    layout = PreparedData(data)
    tok = load_tokenizer(layout.tokenizer)
    cfg = Phi4FlashConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                          num_attention_heads=2, num_key_value_heads=2, sliding_window=32,
                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    export = save_export(Phi4FlashForCausalLM(cfg), layout.tokenizer, root / "export") or root / "export"
    return Path(data), Path(export)


def _pointing_at(entry: str, data: Path, export: Path, out: Path) -> list[str]:
    """Overrides that point a stage recipe's inputs at the tiny data and export and its outputs under ``out``."""
    return {
        # Not the tiny data: a recipe's sizes differ from it, and prepare refuses a directory made with others.
        "prepare": [f"out_dir={out / 'data'}"],
        "pretrain": [f"data.dir={data}", f"run.dir={out / 'run'}"],
        "sft": [f"data.dir={data}", f"run.dir={out / 'run'}", f"sft.init_from={out / 'no_export_yet'}"],
        "dpo": [f"dpo.data_dir={data}", f"dpo.init_from={export}", f"run.dir={out / 'run'}"],
        "evaluate": [f"data_dir={data}", f"model_path={export}", f"output_dir={out / 'eval'}"],
    }[entry]


def dry_run(entry: str, dcfg) -> int:
    """The entry point's dry run, in process; its exit status."""
    module = importlib.import_module(ENTRIES[entry])
    # The task each entry point's hydra_main (recipes/entry.py) runs on the composed recipe.
    task = module.run if entry in ("pretrain", "sft") else module.run_recipe
    return task(dcfg)


@pytest.fixture
def watched(tmp_path, monkeypatch, tiny):
    """Runs from an empty working directory; afterwards it and the tiny data must be unchanged."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _snapshot(tiny[0])
    yield tmp_path / "out"
    assert not list(cwd.iterdir()), "a dry run wrote into the working directory"
    assert not (tmp_path / "out").exists(), "a dry run wrote its outputs"
    assert _snapshot(tiny[0]) == before, "a dry run changed the prepared data"


STAGE_RECIPES = [(e, p.stem) for e in ENTRIES for p in sorted((RECIPES / e).glob("*.yaml"))]


@pytest.mark.parametrize("entry,name", STAGE_RECIPES)
def test_stage_recipe_dry_run(entry, name, tiny, watched, capsys):
    data, export = tiny
    override = DRY_RUN_OVERRIDES[ENTRIES[entry]]
    # The fine-tuning recipe reads a checkpoint and chat data of the user's, not prepared shard sets.
    own = ([f"sft.init_from={export}", f"sft.train_data={PreparedData(data).sft_jsonl(SFT_STAGES[0])}"]
           if (entry, name) == ("sft", "finetune") else [])
    dcfg = _compose(entry, name, _pointing_at(entry, data, export, watched) + [override] + own)
    assert dry_run(entry, dcfg) == 0
    if entry in ("pretrain", "sft"):
        assert "train_flops_per_token" in capsys.readouterr().out


PIPELINES = sorted(p.stem for p in (RECIPES / "pipeline").glob("*.yaml"))


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_recipe_dry_runs_every_stage(name, tiny, watched):
    """What ``scripts/pipeline.py dry_run=true`` runs, stage by stage, in process (the subprocess launch itself is
    tests/scripts/test_pipeline_driver.py's)."""
    data, export = tiny
    pipe = to_config(_compose("pipeline", name, [f"data_dir={data}", f"run_dir={watched / 'pipeline'}"]))
    entry_of = {module: entry for entry, module in ENTRIES.items()}
    for stage in selected_stages(pipe):
        module, *args = stage_args(pipe, stage)
        entry = entry_of[module]
        recipe = next(a.split("=", 1)[1] for a in args if a.startswith("--config-name="))
        overrides = [a for a in args if not a.startswith("--config-name=")]
        if entry == "prepare":  # a fresh directory: prepare refuses the tiny data, made with other sizes
            overrides = [f"out_dir={watched / 'data'}"]
        if entry in ("dpo", "evaluate"):  # the exports they start from do not exist before the training stages ran
            overrides += [f"dpo.init_from={export}"] if entry == "dpo" else [f"model_path={export}"]
        dcfg = _compose(entry, recipe, overrides + [DRY_RUN_OVERRIDES[module]])
        assert dry_run(entry, dcfg) == 0, stage


def test_missing_data_fails_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "never_prepared"
    from train.pretrain import run

    dcfg = _compose("pretrain", "demo", [f"data.dir={missing}", f"run.dir={tmp_path / 'run'}", "trainer.dry_run=true"])
    with pytest.raises(Exception, match=str(missing)):
        assert run(dcfg) != 0
        raise AssertionError(f"no error named {missing}")
