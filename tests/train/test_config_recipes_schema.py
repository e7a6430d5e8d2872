"""The Hydra recipe tree: typed schemas, required override names, Hydra output settings, validation errors."""
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from data.prepare_config import register_prepare_schema
from scripts.pipeline_config import register_pipeline_schema
from train.config import PretrainConfig, SFTConfig, register_pretrain_schema, register_sft_schema
from train.alignment.dpo_config import register_dpo_schema
from train.evals.evaluate_config import register_evaluate_schema
from train.runtime.distributed import deepspeed_json, resolve_precision
from train.config import DeepSpeedConfig
from train.engine.trainer import BatchGeometry

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def compose_recipe(entry, name, overrides=(), hydra_cfg=False):
    register_pretrain_schema()
    register_sft_schema()
    register_dpo_schema()
    with initialize_config_dir(config_dir=str(RECIPES / entry), version_base=None):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra_cfg)


@pytest.mark.parametrize("entry,schema", [("pretrain", PretrainConfig), ("sft", SFTConfig)])
def test_every_recipe_composes_to_its_schema(entry, schema):
    names = sorted(p.stem for p in (RECIPES / entry).glob("*.yaml"))
    assert "demo" in names
    for name in names:
        cfg = compose_recipe(entry, name)
        if OmegaConf.is_missing(cfg.run, "name"):  # a recipe without a name gets train.runtime.run_name's at launch
            cfg.run.name = "unnamed"
        if entry == "sft" and OmegaConf.is_missing(cfg.sft, "init_from"):  # finetune.yaml: the user's checkpoint
            cfg.sft.init_from = "checkpoint"
        obj = OmegaConf.to_object(cfg)
        assert isinstance(obj, schema), name
        assert obj.run.dir == f"runs/{obj.run.name}"


def test_required_override_names_exist():
    cfg = compose_recipe("pretrain", "demo", ["run.name=x", "run.dir=/tmp/x", "trainer.max_steps=3",
                                              "trainer.save_every=2", "trainer.log_every=1", "trainer.seed=7",
                                              "trainer.dry_run=true"])
    assert (cfg.run.dir, cfg.trainer.max_steps, cfg.trainer.seed, cfg.trainer.dry_run) == ("/tmp/x", 3, 7, True)


def test_typo_in_override_names_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose_recipe("pretrain", "demo", ["trainer.max_stepz=3"])
    assert "max_stepz" in str(e.value.__cause__ or e.value)
    with pytest.raises(ConfigCompositionException):
        compose_recipe("sft", "demo", ["sft.stages_to_rum=[basic]"])


def test_type_error_in_override():
    with pytest.raises(ConfigCompositionException):
        compose_recipe("pretrain", "demo", ["trainer.max_steps=many"])


@pytest.mark.parametrize("entry", ["pretrain", "sft", "dpo", "evaluate", "prepare", "pipeline"])
def test_hydra_writes_nothing_of_its_own(entry):
    """Hydra's run dir is the working directory (the trainer makes run.dir itself; a dry run makes nothing), with
    no .hydra/ folder and no log file: for every recipe of every entry point, through recipes/common/hydra.yaml."""
    register_evaluate_schema(), register_prepare_schema(), register_pipeline_schema()
    for name in sorted(p.stem for p in (RECIPES / entry).glob("*.yaml")):
        cfg = compose_recipe(entry, name, hydra_cfg=True)
        assert cfg.hydra.run.dir == ".", name
        assert cfg.hydra.output_subdir is None, name
        assert cfg.hydra.job.chdir is False, name
        assert "FileHandler" not in str(OmegaConf.to_container(cfg.hydra.job_logging)), name


def test_the_hydra_settings_are_written_once():
    """A recipe's own `hydra:` block holds at most the search path (Hydra reads it from the primary recipe
    before it composes the defaults, so it cannot come from an included file); the rest is
    recipes/common/hydra.yaml's, which test_hydra_writes_nothing_of_its_own checks reaches every recipe."""
    for entry in ("pretrain", "sft", "dpo", "evaluate", "prepare", "pipeline"):
        for path in sorted((RECIPES / entry).glob("*.yaml")):
            assert set(OmegaConf.load(path).get("hydra", {})) <= {"searchpath"}, path


def test_official_model_recipe_is_the_config_class_preset():
    """The official architecture is written once, as Phi4FlashConfig's defaults; the recipe and schema refer to it."""
    from sambay_model import Phi4FlashConfig
    from train.runtime.model_build import hf_config

    assert yaml.safe_load((RECIPES / "model" / "phi4_mini_flash.yaml").read_text()) == {}
    cfg = OmegaConf.to_object(compose_recipe("pretrain", "phi4_mini_flash")).model
    assert cfg.vocab_size is None  # from the data manifest
    built, official = hf_config(cfg, vocab_size=200064, eos_token_id=None), Phi4FlashConfig()
    keys = [f.name for f in dataclasses.fields(type(cfg)) if hasattr(official, f.name) and f.name != "vocab_size"]
    assert len(keys) >= 25 and all(getattr(built, k) == getattr(official, k) for k in keys)
    assert (built.hidden_size, built.intermediate_size, built.num_key_value_heads, built.sliding_window[1]) == \
        (2560, 10240, 20, 512)


@pytest.mark.parametrize("entry,name,override,key", [
    ("sft", "demo", "data.sources=[]", "sources"),              # each stage has its own sources
    ("sft", "demo", "data.seq_len=256", "seq_len"),             # ... and sequence length
    ("sft", "demo", "optim.lr=0.1", "lr"),                      # ... and LR and schedule
    ("sft", "demo", "+optim=mup", "lr"),                         # muP++ is a pretraining option
    ("dpo", "demo", "trainer.eval_every=5", "eval_every"),      # DPO's loop has no DeepSpeed-trainer keys
    ("dpo", "demo", "trainer.export=false", "export"),
])
def test_keys_a_stage_would_ignore_are_rejected(entry, name, override, key):
    with pytest.raises(ConfigCompositionException) as e:
        compose_recipe(entry, name, [override])
    assert key in str(e.value.__cause__ or e.value)


@pytest.mark.parametrize("override,key", [("model.init_from=/x", "model.init_from"), ("trainer.epochs=2", "trainer.epochs")])
def test_sft_refuses_pretraining_keys_it_would_ignore(override, key):
    with pytest.raises(Exception, match=key):
        OmegaConf.to_object(compose_recipe("sft", "demo", [override]))


def test_pipeline_recipes_rewrite_no_stage_internals():
    """Stage recipes are what the stages run: no list-index override, and the demo SFT recipe holds its settings."""
    for path in (RECIPES / "pipeline").glob("*.yaml"):
        for stage, spec in (yaml.safe_load(path.read_text()).get("stages") or {}).items():
            keys = [k for k in _flat(spec.get("overrides") or {})]
            assert not any(part.isdigit() for k in keys for part in k.split(".")), (path.name, stage, keys)
    sft = OmegaConf.to_object(compose_recipe("sft", "demo"))
    assert [(s.name, s.max_steps, s.lr, s.seq_len, s.schedule.name) for s in sft.sft.stages] == [
        ("basic", 300, 3.0e-3, 512, "wsd"), ("math", 350, 2.0e-3, 512, "wsd")]
    assert (sft.data.global_batch_tokens, sft.data.micro_batch_rows) == (2048, 2)


def _flat(mapping, prefix=""):
    for k, v in mapping.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_batch_geometry_validation():
    g = BatchGeometry(seq_len=512, global_batch_tokens=8192, micro_batch_rows=2, world_size=2)
    g.validate()
    assert (g.global_rows, g.grad_accum) == (16, 4)
    with pytest.raises(ValueError, match="data.global_batch_tokens=8000"):
        BatchGeometry(512, 8000, 2, 2).validate()
    with pytest.raises(ValueError, match="micro_batch_rows"):
        BatchGeometry(512, 8192, 3, 2).validate()


def test_deepspeed_json():
    ds = deepspeed_json(DeepSpeedConfig(zero_stage=2, grad_clip=0.5), micro_batch_rows=2, grad_accum=4, world_size=2,
                        compute_dtype=torch.float32)
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 0.5
    assert "bf16" not in ds and "optimizer" not in ds  # autocast + client optimizer: no DS JIT op builds
    off = deepspeed_json(DeepSpeedConfig(zero_stage=3, offload_optimizer=True, offload_param=True),
                         micro_batch_rows=1, grad_accum=1, world_size=1, compute_dtype=torch.bfloat16)
    assert off["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}  # computation dtype: test_precision_bf16_e2e
    assert off["zero_optimization"]["offload_param"]["device"] == "cpu"
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_json(DeepSpeedConfig(zero_stage=4), micro_batch_rows=1, grad_accum=1, world_size=1,
                       compute_dtype=torch.float32)
    with pytest.raises(ValueError, match="offload_param"):
        deepspeed_json(DeepSpeedConfig(zero_stage=2, offload_param=True), micro_batch_rows=1, grad_accum=1,
                       world_size=1, compute_dtype=torch.float32)
    assert resolve_precision(DeepSpeedConfig(), torch.device("cpu")) == torch.float32
    assert resolve_precision(DeepSpeedConfig(precision="bf16"), torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision(DeepSpeedConfig(precision="fp16"), torch.device("cpu"))


def test_dpo_refuses_keeping_fewer_than_two_checkpoints():
    """With one checkpoint kept, a kill between the Trainer's pruning and the COMPLETE marker leaves none."""
    base = ["dpo.init_from=/x"]
    assert OmegaConf.to_object(compose_recipe("dpo", "demo", base)).trainer.keep_last >= 2
    with pytest.raises(ValueError, match="trainer.keep_last=1"):
        OmegaConf.to_object(compose_recipe("dpo", "demo", base + ["trainer.keep_last=1"]))
