"""The Hydra recipe tree: typed schemas, required override names, Hydra output settings, validation errors."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from train.config import PretrainConfig, SFTConfig, register_configs
from train.distributed import deepspeed_json, resolve_precision
from train.config import DeepSpeedConfig
from train.trainer import BatchGeometry

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def compose_recipe(entry, name, overrides=(), hydra_cfg=False):
    register_configs()
    with initialize_config_dir(config_dir=str(RECIPES / entry), version_base=None):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra_cfg)


@pytest.mark.parametrize("entry,schema", [("pretrain", PretrainConfig), ("sft", SFTConfig)])
def test_every_recipe_composes_to_its_schema(entry, schema):
    names = sorted(p.stem for p in (RECIPES / entry).glob("*.yaml"))
    assert "demo" in names
    for name in names:
        cfg = compose_recipe(entry, name)
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


def test_hydra_writes_nothing_of_its_own():
    cfg = compose_recipe("pretrain", "demo", ["run.name=abc"], hydra_cfg=True)
    assert cfg.hydra.run.dir == "runs/abc"
    assert cfg.hydra.output_subdir is None
    assert cfg.hydra.job.chdir is False
    assert "FileHandler" not in str(OmegaConf.to_container(cfg.hydra.job_logging))


def test_official_model_recipe_values():
    cfg = compose_recipe("pretrain", "phi4_mini_flash").model
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (200064, 2560, 10240, 32)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.sliding_window) == (40, 20, 512)


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
    assert off["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}  # computation dtype: test_precision_bf16
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
