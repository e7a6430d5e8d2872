"""End-to-end runs of ``train.pretrain`` on tiny shards made here: accumulation and data-parallel equivalence,
SIGTERM save-and-exit, non-finite loss handling, run-directory contents.

The slow end-to-end tests; the fast ones are in test_trainer_runs.py."""
import signal
import subprocess
import time

import pytest

from tests.train.builders import ONE_STEP, REPO, assert_same_params, command, env, latest_params, metrics, run


@pytest.mark.slow
def test_two_ranks_match_one_rank_with_twice_the_micro_batch(pretrain_shards, tmp_path):
    run(tmp_path / "r1", pretrain_shards, [*ONE_STEP, "data.micro_batch_rows=4"])
    run(tmp_path / "r2", pretrain_shards, [*ONE_STEP, "data.micro_batch_rows=2", "deepspeed.zero_stage=2"], nproc=2)
    a, b = metrics(tmp_path / "r1")[0], metrics(tmp_path / "r2")[0]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    assert_same_params(latest_params(tmp_path / "r1"), latest_params(tmp_path / "r2"))


@pytest.mark.slow
def test_bad_batch_geometry_is_a_clear_error(pretrain_shards, tmp_path):
    p = run(tmp_path / "bad", pretrain_shards, ["data.global_batch_tokens=100"], check=False)
    assert p.returncode != 0 and "data.global_batch_tokens=100" in p.stderr


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes(pretrain_shards, tmp_path):
    rd = tmp_path / "sig"
    overrides = ["trainer.max_steps=40", "trainer.log_every=1", "trainer.save_every=100",
                 "data.global_batch_tokens=128", "trainer.export=false"]
    proc = subprocess.Popen(command(rd, pretrain_shards, overrides), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (rd / "metrics.jsonl").exists() or not (rd / "metrics.jsonl").read_text().strip():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stop signal" in out
    assert not (rd / "DONE").exists()
    saved = (rd / "checkpoints" / "latest").read_text()
    step = int(saved.removeprefix("step"))
    assert 1 <= step < 40
    run(rd, pretrain_shards, overrides)
    assert (rd / "DONE").exists()
    steps = [r["step"] for r in metrics(rd)]
    assert steps == list(range(1, 41))


@pytest.mark.slow
def test_nonfinite_loss_stops_or_skips(pretrain_shards, tmp_path):
    overrides = ["trainer.max_steps=3", "trainer.log_every=1", "trainer.save_every=1", "optim.lr=1e30",
                 "deepspeed.grad_clip=0", "data.global_batch_tokens=128", "trainer.export=false"]
    rd = tmp_path / "nan"
    p = run(rd, pretrain_shards, overrides, check=False)
    assert p.returncode == 3, p.stderr[-3000:]
    assert "non-finite loss" in p.stderr
    assert (rd / "checkpoints" / "latest").read_text() == "step00000001"
    assert not (rd / "DONE").exists()
    rd2 = tmp_path / "skip"
    run(rd2, pretrain_shards, [*overrides, "trainer.skip_nonfinite=true"])
    rows = metrics(rd2)
    assert rows[0]["skipped"] is False and all(r["skipped"] for r in rows[1:])
    assert (rd2 / "DONE").exists()
