"""Runs of ``train.pretrain`` on tiny shards: accumulation equivalence, run-directory contents, epoch counting.

The slow ones (data-parallel equivalence, batch-geometry errors, SIGTERM save-and-exit, non-finite loss) are in
test_trainer_runs_e2e.py."""
import pytest
import torch

from tests.train.builders import ONE_STEP, assert_same_params, latest_params, metrics, run


def test_grad_accumulation_matches_big_micro_batch(pretrain_shards, tmp_path):
    run(tmp_path / "mb4", pretrain_shards, [*ONE_STEP, "data.micro_batch_rows=4"])
    run(tmp_path / "mb1", pretrain_shards, [*ONE_STEP, "data.micro_batch_rows=1"])
    m4, m1 = metrics(tmp_path / "mb4")[0], metrics(tmp_path / "mb1")[0]
    assert m4["grad_norm"] > 0 and m4["lr"] > 0  # an update happened
    assert m1["loss"] == pytest.approx(m4["loss"], rel=1e-6)
    assert m1["grad_norm"] == pytest.approx(m4["grad_norm"], rel=1e-5)
    assert_same_params(latest_params(tmp_path / "mb4"), latest_params(tmp_path / "mb1"))


def test_run_directory_contents(pretrain_shards, tmp_path):
    rd = tmp_path / "full"
    overrides = ["trainer.max_steps=2", "trainer.log_every=1", "trainer.save_every=1", "trainer.keep_last=1",
                 "data.global_batch_tokens=128", "trainer.eval_every=2", "trainer.eval_batches=1"]
    run(rd, pretrain_shards, overrides)
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
    # Relaunching a finished run with its config does nothing (a changed config is refused: test_run_config_change).
    p = run(rd, pretrain_shards, overrides)
    assert "nothing to do" in p.stdout


def test_epochs_count_the_packed_rows_the_loader_consumes(pretrain_shards):
    """``epochs: 1.0`` with whole-document packing (SFT) is one full pass: padding is part of every row, so
    steps come from padded row tokens (non-padding tokens / batch tokens would stop at ~3/4 of a pass)."""
    from data.loader import PackedLoader
    from train.config import TrainerConfig
    from train.engine.trainer import total_steps

    seq_len, rows = 96, 2
    loader = PackedLoader([(pretrain_shards, 1.0)], split="train", seq_len=seq_len, global_batch_rows=rows,
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
