"""train.dpo's distributed set-up: the CUDA device per local rank before the first collective, and on-policy
pairs sampled by every rank (files gather them; no collective waits on sampling).

The slow end-to-end tests; the fast ones are in test_dpo_distributed.py."""
import pytest

from tests.train.builders import REPO, build_dpo_export


@pytest.mark.slow
def test_torchrun_two_ranks_sample_on_policy_pairs(dpo_data, tmp_path):
    import subprocess
    import sys

    export = build_dpo_export(dpo_data, tmp_path / "export")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.dpo",
           f"dpo.init_from={export}", f"dpo.data_dir={dpo_data}", f"run.dir={run_dir}", "deepspeed=zero2",
           "trainer.max_steps=1", "trainer.save_every=1", "trainer.log_every=1", "trainer.progress_bar=false",
           "dpo.train_limit=4", "dpo.heldout_limit=2", "dpo.per_device_batch_size=2", "dpo.max_length=256",
           "dpo.on_policy.enabled=true", "dpo.on_policy.num_problems=5", "dpo.on_policy.sampling.num_samples=2",
           "dpo.on_policy.sampling.max_new_tokens=8", "dpo.on_policy.mix=append", "wandb.mode=disabled"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "DONE").exists() and (run_dir / "on_policy_pairs.jsonl").exists()
    parts = sorted(p.name for p in (run_dir / "on_policy_parts").iterdir())
    assert parts == ["part-00000-of-00002.jsonl", "part-00001-of-00002.jsonl"]
    assert "rank 0: built" in proc.stdout and "rank 1: built" in proc.stdout
