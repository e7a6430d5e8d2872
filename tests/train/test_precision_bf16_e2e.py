"""``deepspeed.precision=bf16`` computes the training forward in bf16 inside the DeepSpeed engine, with fp32
parameters / master weights, the SSM and lambda parameters kept fp32, bf16 gradient communication for the
matmul weights, and (ZeRO-3) no autocast cache of gathered weights.

These run on CPU with the GPU-side condition emulated: ``precision_probe.py`` makes the no-argument
``torch.is_autocast_enabled()`` device-aware, as it is on CUDA (see its docstring). The assertions are on
the dtypes the linears actually computed in (forward hooks), not on the DeepSpeed JSON.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.builders import REPO, TINY, build_dpo_data, build_dpo_export, env, latest_params, make_data


PROBE = Path(__file__).with_name("precision_probe.py")
NESTED_WARNING = "disabled within the DeepSpeed engine"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def probe_pretrain(tmp_path: Path, shard_dir: Path, overrides: list[str]) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / "probe.json"
    cmd = [sys.executable, str(PROBE), str(out), "train.pretrain", "run.name=t", f"run.dir={tmp_path / 'run'}",
           f"data.sources=[{{path:{shard_dir},weight:1.0}}]", *TINY, "model.use_diff_attn=true", "trainer.max_steps=1", "trainer.log_every=1",
           "trainer.export=false", "data.global_batch_tokens=128", *overrides]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{p.stdout[-2000:]}\n{p.stderr[-5000:]}"
    return json.loads(out.read_text()), p


def assert_bf16_compute_fp32_params(rec: dict) -> None:
    body = [r for r in rec["linears"] if not r["lm_head"]]
    assert body, "no training-mode linear forward was recorded"
    assert {r["output"] for r in body} == {"torch.bfloat16"}, {r["output"] for r in body}
    assert {r["weight"] for r in body} == {"torch.float32"}  # the parameters themselves stay fp32
    assert {r["comm_dtype"] for r in body} == {"torch.bfloat16"}  # ZeRO reduces these gradients in bf16
    assert rec["kept"] and set(rec["kept"].values()) == {"torch.float32"}, rec["kept"]
    assert {k.rsplit(".", 1)[1] for k in rec["kept"]} >= {"A_log", "D", "lambda_q1"}


@pytest.mark.slow
def test_zero2_bf16_runs_in_bf16_inside_the_engine(shards, tmp_path):
    rec, p = probe_pretrain(tmp_path, shards, ["deepspeed.zero_stage=2", "deepspeed.precision=bf16"])
    assert_bf16_compute_fp32_params(rec)
    assert NESTED_WARNING not in p.stdout + p.stderr
    state = latest_params(tmp_path / "run")  # the checkpointed (master) weights are fp32
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}


@pytest.mark.slow
def test_zero3_bf16_keeps_no_autocast_weight_cache(shards, tmp_path):
    rec, _ = probe_pretrain(tmp_path, shards, ["deepspeed.zero_stage=3", "deepspeed.precision=bf16"])
    assert_bf16_compute_fp32_params(rec)
    assert {r["autocast_cache"] for r in rec["linears"]} == {False}


@pytest.mark.slow
def test_fp32_precision_computes_in_fp32(shards, tmp_path):
    rec, _ = probe_pretrain(tmp_path, shards, ["deepspeed.zero_stage=2", "deepspeed.precision=fp32"])
    assert {r["output"] for r in rec["linears"]} == {"torch.float32"}


@pytest.fixture(scope="module")
def dpo_export(tmp_path_factory):

    root = tmp_path_factory.mktemp("dpo")
    data = build_dpo_data(root / "data")
    return data, build_dpo_export(data, root / "export")


@pytest.mark.slow
def test_dpo_zero2_bf16_runs_in_bf16_with_fp32_ssm_params(dpo_export, tmp_path):
    """DPO follows the same rules: DeepSpeed's bf16 mode would cast the model, the _apply override would turn
    A_log / D back to fp32 and ZeRO's flattening would then run everything in fp32."""
    data, export = dpo_export
    out = tmp_path / "probe.json"
    cmd = [sys.executable, str(PROBE), str(out), "train.dpo", f"dpo.init_from={export}", f"dpo.data_dir={data}",
           f"run.dir={tmp_path / 'run'}", "deepspeed=zero2", "deepspeed.precision=bf16", "trainer.max_steps=1",
           "trainer.save_every=1", "trainer.log_every=1", "trainer.progress_bar=false", "dpo.train_limit=4",
           "dpo.heldout_limit=2", "dpo.per_device_batch_size=2", "dpo.max_length=256", "wandb.mode=disabled",
           "dpo.on_policy.enabled=false"]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{p.stdout[-2000:]}\n{p.stderr[-5000:]}"
    rec = json.loads(out.read_text())
    assert_bf16_compute_fp32_params(rec)
    assert NESTED_WARNING not in p.stdout + p.stderr
