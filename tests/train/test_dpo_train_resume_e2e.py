"""train.dpo on a tiny SambaY export: bad input, a short run with held-out metrics, resume from a checkpoint.

The slow end-to-end tests; the fast ones are in test_dpo_train_resume.py."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.builders import REPO, descendants, dpo_cfg, run_dpo


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["precomputed", "frozen_copy"])
def test_dpo_run_learns_exports_and_resumes(dpo_tiny, tmp_path, reference):
    from train.runtime.model_build import load_export

    data, export = dpo_tiny
    run_dir = tmp_path / "run"
    # Held-out = the training pairs here, so a 4-step run must visibly raise the margin.
    cfg = dpo_cfg(data, export, run_dir, reference=reference, eval_data=str(data / "preference" / "train.jsonl"),
               heldout_limit=16)
    metrics = run_dpo(cfg)
    assert metrics["heldout_reward_margin"] > 0
    assert metrics["heldout_preference_accuracy"] > 0.5
    assert metrics["heldout_logp_margin_policy"] > metrics["heldout_logp_margin_ref"]
    for name in ("config.yaml", "metrics.jsonl", "dpo_heldout.json", "DONE", "export/config.json",
                 "export/tokenizer.json", "export/generation_config.json"):
        assert (run_dir / name).exists(), name
    reloaded = load_export(run_dir / "export")
    assert sum(p.numel() for p in reloaded.parameters()) > 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert run_dpo(cfg) is None  # DONE: a relaunch does nothing

    if reference != "precomputed":
        return
    # Simulate a crash after step 3: only checkpoint-2 survives; the relaunch must replay steps 3-4 exactly.
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-4")
    shutil.rmtree(run_dir / "export")
    for name in ("DONE", "dpo_heldout.json"):
        (run_dir / name).unlink()
    resumed = run_dpo(cfg)
    again = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(records[2:], again[2:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert resumed["heldout_reward_margin"] == pytest.approx(metrics["heldout_reward_margin"], rel=1e-4)


@pytest.mark.slow
def test_torchrun_two_ranks_zero2(dpo_tiny, tmp_path):
    data, export = dpo_tiny
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.dpo",
           f"dpo.init_from={export}", f"dpo.data_dir={data}", f"run.dir={run_dir}", "deepspeed=zero2",
           "trainer.max_steps=2", "trainer.save_every=2", "trainer.log_every=1", "trainer.progress_bar=false",
           "dpo.train_limit=8", "dpo.heldout_limit=4", "dpo.per_device_batch_size=2", "dpo.max_length=512",
           "wandb.mode=disabled", "dpo.on_policy.enabled=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "DONE").exists() and (run_dir / "export" / "model.safetensors").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["epoch"] == pytest.approx(0.5)  # 2 ranks x 2 pairs of 8 per step
    assert json.loads(proc.stdout.strip().splitlines()[-1])["heldout_pairs"] == 4


@pytest.mark.slow
def test_torchrun_sigterm_saves_agreed_checkpoint_and_resumes_past_a_partial_one(dpo_tiny, tmp_path):
    """SIGTERM to both ranks (as Slurm's `scancel --signal=TERM` does) mid-run: they save one checkpoint at the
    same step and exit 0 without DONE; a later partial checkpoint (a save killed half-way) is skipped with a
    warning and the relaunch finishes the run."""
    import os
    import signal
    import time

    from train.runtime.hf_resume import COMPLETE, checkpoints_by_step

    data, export = dpo_tiny
    run_dir = tmp_path / "run"
    # Long enough that the signal, sent once step 1 is logged, lands mid-run on a loaded machine too (8 steps took
    # ~1.2 s: a send delayed by load could come after the last step, and the run would then rightly finish).
    max_steps = 24
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.dpo",
           f"dpo.init_from={export}", f"dpo.data_dir={data}", f"run.dir={run_dir}", "deepspeed=zero2",
           f"trainer.max_steps={max_steps}", "trainer.save_every=0", "trainer.log_every=1",
           "trainer.progress_bar=false", "dpo.train_limit=8", "dpo.heldout_limit=4", "dpo.per_device_batch_size=1",
           "dpo.max_length=512", "wandb.mode=disabled", "dpo.on_policy.enabled=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 400
        while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.1)
        ranks = descendants(proc.pid)
        assert len(ranks) >= 2
        for pid in ranks:
            os.kill(pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "[dpo] stop signal: saved checkpoint-" in out, f"the signal did not land mid-run:\n{out[-2000:]}"
    assert not (run_dir / "DONE").exists()
    saved = checkpoints_by_step(run_dir / "checkpoints")
    assert len(saved) == 1 and (saved[0][1] / COMPLETE).is_file() and saved[0][0] < max_steps
    stopped_at, complete = saved[0]
    # A save killed half-way at a later step: a directory without the marker and with a truncated weight file.
    partial = run_dir / "checkpoints" / f"checkpoint-{stopped_at + 1}"
    shutil.copytree(complete, partial)
    (partial / COMPLETE).unlink()
    (partial / "model.safetensors").write_bytes(b"\0" * 16)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checkpoint-{stopped_at + 1} has no COMPLETE marker" in proc.stderr
    assert (run_dir / "DONE").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, max_steps + 1))


@pytest.mark.slow
def test_zero3_export_is_the_gathered_trained_policy(dpo_tiny, tmp_path):
    """Under ZeRO-3 the export goes through train.runtime.export like pretraining's (every shard gathered): it holds the
    same full weights as the HF Trainer's own gathered checkpoint, moved away from the init export."""
    from safetensors.torch import load_file

    data, export = dpo_tiny
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.dpo", f"dpo.init_from={export}", f"dpo.data_dir={data}", f"run.dir={run_dir}",
           "deepspeed=zero3", "trainer.max_steps=2", "trainer.save_every=2", "trainer.keep_last=2",
           "trainer.log_every=1", "trainer.progress_bar=false", "dpo.train_limit=4", "dpo.heldout_limit=2",
           "dpo.per_device_batch_size=2", "dpo.max_length=256", "wandb.mode=disabled",
           "dpo.on_policy.enabled=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = load_file(run_dir / "export" / "model.safetensors")
    gathered = load_file(run_dir / "checkpoints" / "checkpoint-2" / "model.safetensors")
    init = load_file(export / "model.safetensors")
    assert exported.keys() == gathered.keys() == init.keys()
    for k in init:
        assert exported[k].shape == init[k].shape and exported[k].dtype == torch.float32, k
        torch.testing.assert_close(exported[k], gathered[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(exported[k], init[k]) for k in init)
