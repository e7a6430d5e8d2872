"""The ZeRO-Offload recipes train: DeepSpeed refuses a client torch optimizer with offload, so the trainer hands
it a DeepSpeedCPUAdam over the same parameter groups. DeepSpeed JIT-builds its cpu_adam op the first time
(minutes on 2 cores; cached in .cache/torch_extensions, see train.runtime.distributed.prepare_deepspeed_env)."""
import math

import pytest
import torch

from tests.train.builders import REPO, build_dpo_data, build_dpo_export, env, latest_params, make_data, metrics, run


STEPS = ["trainer.max_steps=3", "trainer.log_every=1", "trainer.export=false", "data.global_batch_tokens=128",
         "optim.lr=3e-3"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["zero2_offload", "zero3_offload"])
def test_offload_recipe_trains_like_zero2(shards, tmp_path, recipe):
    run(tmp_path / "ref", shards, [*STEPS, "deepspeed=zero2"])
    p = run(tmp_path / recipe, shards, [*STEPS, f"deepspeed={recipe}"])
    assert "client provided optimizer" not in p.stdout + p.stderr
    ref, off = metrics(tmp_path / "ref"), metrics(tmp_path / recipe)
    assert [r["step"] for r in off] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in off)
    # Same data, same init, same AdamW maths (DeepSpeedCPUAdam in AdamW mode): steps 2 and 3 see the
    # updated weights, so their losses follow the torch-AdamW run only if the offloaded updates are the same.
    for a, b in zip(ref, off):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["zero2", "zero2_offload"])
def test_skip_nonfinite_under_zero_skips_every_group(shards, tmp_path, recipe):
    """A skipped non-finite step leaves every parameter group untouched: ZeRO calls the optimizer's step once
    per group, so a flag that cleared itself on the first call let the second group (no_decay) update."""
    overrides = ["trainer.max_steps=2", "trainer.log_every=1", "trainer.save_every=1", "trainer.keep_last=2",
                 "optim.lr=1e30", "deepspeed.grad_clip=0", "data.global_batch_tokens=128", "trainer.export=false",
                 "trainer.skip_nonfinite=true", f"deepspeed={recipe}"]
    rd = tmp_path / "skip"
    run(rd, shards, overrides)
    rows = metrics(rd)
    assert rows[0]["skipped"] is False and rows[1]["skipped"] is True
    ckpt = rd / "checkpoints"
    step1 = torch.load(ckpt / "step00000001" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    step2 = latest_params(rd)
    assert all(torch.isfinite(v).all() for v in step1.values())  # so an update by NaN gradients would show
    for k in step1:
        torch.testing.assert_close(step2[k], step1[k], rtol=0, atol=0, equal_nan=True, msg=k)


@pytest.mark.slow
def test_dpo_trains_with_zero2_offload(tmp_path):
    """DPO through the HF Trainer: the DeepSpeed config's ``optimizer`` section makes DeepSpeed build
    DeepSpeedCPUAdam (the Trainer's torch AdamW would be refused with offload)."""
    import json
    import subprocess
    import sys

    data = build_dpo_data(tmp_path / "data")
    export = build_dpo_export(data, tmp_path / "export")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.dpo", f"dpo.init_from={export}", f"dpo.data_dir={data}", f"run.dir={run_dir}",
           "deepspeed=zero2_offload", "trainer.max_steps=2", "trainer.save_every=2", "trainer.log_every=1",
           "trainer.progress_bar=false", "dpo.train_limit=4", "dpo.heldout_limit=2", "dpo.per_device_batch_size=2",
           "dpo.max_length=256", "wandb.mode=disabled", "dpo.on_policy.enabled=false"]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]  # before the fix: ZeRORuntimeException (client optimizer)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and (run_dir / "DONE").exists()
