"""End-to-end runs of ``train.pretrain`` on tiny shards made here: accumulation and data-parallel equivalence,
SIGTERM save-and-exit, non-finite loss handling, run-directory contents."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=8",
        "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.sliding_window=8",
        "data.seq_len=32", "trainer.progress_bar=false", "trainer.eval_every=0", "optim.schedule.warmup_steps=0"]


def make_data(root: Path) -> Path:
    """A 300-token BPE tokenizer and a pretrain shard set (train/val) of random documents."""
    from data.shards import ShardSetWriter, tokenizer_info
    from data.tokenizer import train_bpe_tokenizer

    texts = [f"a tiny corpus line {i} with words {i * 7} and more" for i in range(100)]
    train_bpe_tokenizer(texts, 300, root / "tokenizer")
    info = tokenizer_info(root / "tokenizer")
    rng = np.random.default_rng(0)
    with ShardSetWriter(root / "pretrain", "pretrain", info, ["random"]) as w:
        for split, n in (("train", 120), ("val", 12)):
            for _ in range(n):
                w.add(split, rng.integers(1, info["vocab_size"], size=int(rng.integers(10, 80))))
    return root / "pretrain"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(run_dir, shard_dir, overrides, nproc=1):
    args = ["-m", "train.pretrain", "run.name=t", f"run.dir={run_dir}",
            f"data.sources=[{{path:{shard_dir},weight:1.0}}]", *TINY, *overrides]
    if nproc == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", *args]


def env():
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run(run_dir, shard_dir, overrides, nproc=1, check=True):
    p = subprocess.run(command(run_dir, shard_dir, overrides, nproc), cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def latest_params(run_dir):
    ckpt = Path(run_dir) / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    return torch.load(ckpt / tag / "mp_rank_00_model_states.pt", weights_only=False)["module"]


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


# Adam's first step is lr * g / (|g| + eps): with the default eps 1e-8 a gradient entry near zero turns
# summation-order noise (1 rank vs 2) into an O(lr) difference. A larger eps keeps the update a smooth function
# of the gradient, so comparing parameters after one step still tests that the accumulated gradients agree.
ONE_STEP = ["trainer.max_steps=1", "trainer.log_every=1", "trainer.export=false", "data.global_batch_tokens=128",
            "optim.eps=1.0e-3"]


def test_grad_accumulation_matches_big_micro_batch(shards, tmp_path):
    run(tmp_path / "mb4", shards, [*ONE_STEP, "data.micro_batch_rows=4"])
    run(tmp_path / "mb1", shards, [*ONE_STEP, "data.micro_batch_rows=1"])
    m4, m1 = metrics(tmp_path / "mb4")[0], metrics(tmp_path / "mb1")[0]
    assert m4["grad_norm"] > 0 and m4["lr"] > 0  # an update happened
    assert m1["loss"] == pytest.approx(m4["loss"], rel=1e-6)
    assert m1["grad_norm"] == pytest.approx(m4["grad_norm"], rel=1e-5)
    assert_same_params(latest_params(tmp_path / "mb4"), latest_params(tmp_path / "mb1"))


@pytest.mark.slow
def test_two_ranks_match_one_rank_with_twice_the_micro_batch(shards, tmp_path):
    run(tmp_path / "r1", shards, [*ONE_STEP, "data.micro_batch_rows=4"])
    run(tmp_path / "r2", shards, [*ONE_STEP, "data.micro_batch_rows=2", "deepspeed.zero_stage=2"], nproc=2)
    a, b = metrics(tmp_path / "r1")[0], metrics(tmp_path / "r2")[0]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    assert_same_params(latest_params(tmp_path / "r1"), latest_params(tmp_path / "r2"))


def test_run_directory_contents(shards, tmp_path):
    rd = tmp_path / "full"
    run(rd, shards, ["trainer.max_steps=2", "trainer.log_every=1", "trainer.save_every=1", "trainer.keep_last=1",
                     "data.global_batch_tokens=128", "trainer.eval_every=2", "trainer.eval_batches=1"])
    assert (rd / "DONE").exists() and (rd / "config.yaml").exists() and (rd / "data_manifest.json").exists()
    rows = metrics(rd)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        assert key in train_rows[0]
    assert any("val_loss" in r and "val_ppl" in r for r in rows)
    assert sorted(p.name for p in (rd / "checkpoints").iterdir() if p.is_dir()) == ["step00000002"]
    assert (rd / "checkpoints" / "latest").read_text() == "step00000002"
    import sambay_model  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(rd / "export")
    state = latest_params(rd)
    for k, v in model.state_dict().items():
        if k in state:
            torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    tok = AutoTokenizer.from_pretrained(rd / "export")
    gen = GenerationConfig.from_pretrained(rd / "export")
    assert tok.convert_tokens_to_ids("<|end|>") in gen.eos_token_id
    # Relaunching a finished run does nothing.
    p = run(rd, shards, ["trainer.max_steps=2", "data.global_batch_tokens=128"])
    assert "nothing to do" in p.stdout


@pytest.mark.slow
def test_bad_batch_geometry_is_a_clear_error(shards, tmp_path):
    p = run(tmp_path / "bad", shards, ["data.global_batch_tokens=100"], check=False)
    assert p.returncode != 0 and "data.global_batch_tokens=100" in p.stderr


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes(shards, tmp_path):
    rd = tmp_path / "sig"
    overrides = ["trainer.max_steps=40", "trainer.log_every=1", "trainer.save_every=100",
                 "data.global_batch_tokens=128", "trainer.export=false"]
    proc = subprocess.Popen(command(rd, shards, overrides), cwd=REPO, env=env(), stdout=subprocess.PIPE,
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
    run(rd, shards, overrides)
    assert (rd / "DONE").exists()
    steps = [r["step"] for r in metrics(rd)]
    assert steps == list(range(1, 41))


@pytest.mark.slow
def test_nonfinite_loss_stops_or_skips(shards, tmp_path):
    overrides = ["trainer.max_steps=3", "trainer.log_every=1", "trainer.save_every=1", "optim.lr=1e30",
                 "deepspeed.grad_clip=0", "data.global_batch_tokens=128", "trainer.export=false"]
    rd = tmp_path / "nan"
    p = run(rd, shards, overrides, check=False)
    assert p.returncode == 3, p.stderr[-3000:]
    assert "non-finite loss" in p.stderr
    assert (rd / "checkpoints" / "latest").read_text() == "step00000001"
    assert not (rd / "DONE").exists()
    rd2 = tmp_path / "skip"
    run(rd2, shards, [*overrides, "trainer.skip_nonfinite=true"])
    rows = metrics(rd2)
    assert rows[0]["skipped"] is False and all(r["skipped"] for r in rows[1:])
    assert (rd2 / "DONE").exists()


def test_epochs_count_the_packed_rows_the_loader_consumes(shards):
    """``epochs: 1.0`` with whole-document packing (SFT) is one full pass: padding is part of every row, so
    steps come from padded row tokens (non-padding tokens / batch tokens would stop at ~3/4 of a pass)."""
    from data.loader import PackedLoader
    from train.config import TrainerConfig
    from train.trainer import total_steps

    seq_len, rows = 96, 2
    loader = PackedLoader([(shards, 1.0)], split="train", seq_len=seq_len, global_batch_rows=rows,
                          split_documents=False)
    steps = total_steps(TrainerConfig(max_steps=0, epochs=1.0), seq_len * rows, loader.padded_tokens_per_epoch, "t")
    # Both bounds set: whichever comes first.
    assert total_steps(TrainerConfig(max_steps=steps - 1, epochs=1.0), seq_len * rows,
                       loader.padded_tokens_per_epoch, "t") == steps - 1
    assert total_steps(TrainerConfig(max_steps=10 * steps, epochs=1.0), seq_len * rows,
                       loader.padded_tokens_per_epoch, "t") == steps
    assert loader.padded_tokens_per_epoch > 1.1 * loader.tokens_per_epoch  # padding is a real share here
    for _ in range(steps - 1):
        loader.next_batch()
    assert loader.source_epochs == [0]  # one step short of the pass
    loader.next_batch()
    assert loader.source_epochs == [1] and loader.epoch == pytest.approx(1.0, abs=rows * seq_len / loader.tokens_per_epoch)
