"""train.dpo on a tiny SambaY export: bad input, a short run with held-out metrics, resume from a checkpoint."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _build_data(root: Path, vocab: int = 320, seed: int = 0) -> Path:
    from data.jsonl import write_jsonl
    from data.preference import pairs_from_corruptions
    from data.reasoning import generate_problems
    from data.tokenizer import train_bpe_tokenizer

    train = generate_problems(40, "train", seed=seed)
    heldout = generate_problems(12, "heldout", seed=seed + 1)
    train_bpe_tokenizer([p["question"] + " " + p["solution"] for p in train[: 30 + seed]], vocab, root / "tokenizer")
    write_jsonl(root / "reasoning" / "train.jsonl", train)
    write_jsonl(root / "reasoning" / "heldout.jsonl", heldout)
    write_jsonl(root / "preference" / "train.jsonl", pairs_from_corruptions(train, seed=0))
    write_jsonl(root / "preference" / "heldout.jsonl", pairs_from_corruptions(heldout, seed=1))
    return root


def _build_export(data_dir: Path, out: Path) -> Path:
    from data.tokenizer import load_tokenizer
    from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
    from train.export import save_export

    tok = load_tokenizer(data_dir / "tokenizer")
    cfg = Phi4FlashConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                          num_attention_heads=2, num_key_value_heads=2, sliding_window=32,
                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    save_export(Phi4FlashForCausalLM(cfg), data_dir / "tokenizer", out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpodata")
    data = _build_data(root / "data")
    return data, _build_export(data, root / "export")


def _cfg(data, export, run_dir, **dpo):
    from train.dpo_config import DPORunConfig

    cfg = DPORunConfig()
    cfg.run.name, cfg.run.dir = "dpo_test", str(run_dir)
    cfg.wandb.mode = "disabled"
    cfg.trainer.max_steps, cfg.trainer.save_every, cfg.trainer.keep_last, cfg.trainer.log_every = 4, 2, 2, 1
    cfg.trainer.progress_bar = False
    cfg.dpo.init_from, cfg.dpo.data_dir = str(export), str(data)
    cfg.dpo.per_device_batch_size, cfg.dpo.max_length, cfg.dpo.lr, cfg.dpo.warmup_steps = 4, 512, 3e-3, 0
    cfg.dpo.train_limit = 16
    for k, v in dpo.items():
        setattr(cfg.dpo, k, v)
    return cfg


def _run(cfg):
    from omegaconf import OmegaConf

    from train.dpo import run

    return run(cfg, OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def test_chosen_equal_rejected_is_an_error_and_writes_nothing(tiny, tmp_path):
    data, export = tiny
    rec = json.loads((data / "preference" / "train.jsonl").read_text().splitlines()[0])
    rec["rejected"] = rec["chosen"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: record 1: chosen and rejected are identical"):
        _run(_cfg(data, export, tmp_path / "run", train_file=str(bad)))
    assert not (tmp_path / "run").exists()


def test_tokenizer_mismatch_is_an_error_and_writes_nothing(tiny, tmp_path):
    from train.eval_tokenizer_check import TokenizerMismatchError

    _, export = tiny
    other = _build_data(tmp_path / "other", vocab=300, seed=3)
    with pytest.raises(TokenizerMismatchError, match="tokenizer mismatch"):
        _run(_cfg(other, export, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_unknown_override_names_the_key():
    proc = subprocess.run([sys.executable, "-m", "train.dpo", "dpo.init_from=x", "dpo.bta=0.2"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "bta" in proc.stderr + proc.stdout


def test_bad_reference_mode_is_rejected():
    from train.dpo_config import DPOSection

    with pytest.raises(ValueError, match="dpo.reference"):
        DPOSection(init_from="x", reference="shared")


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["precomputed", "frozen_copy"])
def test_dpo_run_learns_exports_and_resumes(tiny, tmp_path, reference):
    from train.model_build import load_export

    data, export = tiny
    run_dir = tmp_path / "run"
    # Held-out = the training pairs here, so a 4-step run must visibly raise the margin.
    cfg = _cfg(data, export, run_dir, reference=reference, heldout_file=str(data / "preference" / "train.jsonl"),
               heldout_limit=16)
    metrics = _run(cfg)
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
    assert _run(cfg) is None  # DONE: a relaunch does nothing

    if reference != "precomputed":
        return
    # Simulate a crash after step 3: only checkpoint-2 survives; the relaunch must replay steps 3-4 exactly.
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-4")
    shutil.rmtree(run_dir / "export")
    for name in ("DONE", "dpo_heldout.json"):
        (run_dir / name).unlink()
    resumed = _run(cfg)
    again = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(records[2:], again[2:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert resumed["heldout_reward_margin"] == pytest.approx(metrics["heldout_reward_margin"], rel=1e-4)


def test_on_policy_pairs_pair_graded_right_with_wrong(tiny, monkeypatch):
    import train.on_policy
    from data.jsonl import read_jsonl
    from train.on_policy import build_on_policy_pairs

    data, _ = tiny
    problems = read_jsonl(data / "reasoning" / "train.jsonl")[:3]
    by_prompt = {p["question"]: p for p in problems}

    def fake_generate(model, tokenizer, prompts, sampling, progress=False):
        out = []
        for prompt in prompts:
            p = next(v for q, v in by_prompt.items() if q in prompt)
            out.append([f"wrong. \\boxed{{{int(p['answer']) + 1}}}", p["solution"]][: sampling.num_samples])
        return out

    monkeypatch.setattr(train.on_policy, "generate", fake_generate)
    monkeypatch.setattr(train.on_policy, "chat_prompt", lambda tok, text: text)
    cfg = _cfg(data, "unused", "unused")
    cfg.dpo.on_policy.num_problems, cfg.dpo.on_policy.sampling.num_samples = 3, 2
    pairs = build_on_policy_pairs(None, None, cfg)
    assert len(pairs) == 3
    for pair, p in zip(pairs, problems):
        assert pair["chosen"][0]["content"] == p["solution"]
        assert pair["rejected"][0]["content"].startswith("wrong")


@pytest.mark.slow
def test_torchrun_two_ranks_zero2(tiny, tmp_path):
    data, export = tiny
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.dpo",
           f"dpo.init_from={export}", f"dpo.data_dir={data}", f"run.dir={run_dir}", "deepspeed=zero2",
           "trainer.max_steps=2", "trainer.save_every=2", "trainer.log_every=1", "trainer.progress_bar=false",
           "dpo.train_limit=8", "dpo.heldout_limit=4", "dpo.per_device_batch_size=2", "dpo.max_length=512",
           "wandb.mode=disabled"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "DONE").exists() and (run_dir / "export" / "model.safetensors").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["epoch"] == pytest.approx(0.5)  # 2 ranks x 2 pairs of 8 per step
    assert json.loads(proc.stdout.strip().splitlines()[-1])["heldout_pairs"] == 4


def test_resume_takes_the_newest_complete_checkpoint_and_drops_newer_partial_ones(tmp_path, capsys):
    from train.hf_resume import COMPLETE, MarkCompleteCheckpoints, resume_checkpoint, step_of

    ck = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        (ck / f"checkpoint-{step}").mkdir(parents=True)
        (ck / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    state = type("State", (), {"global_step": 4})()
    MarkCompleteCheckpoints(ck, is_main=True).on_save(None, state, None)
    (ck / "checkpoint-2" / COMPLETE).write_text("2\n")
    # checkpoint-6: a save killed half-way (no marker); highest N, so get_last_checkpoint would pick it.
    got = resume_checkpoint(ck, is_main=True)
    assert got == ck / "checkpoint-4" and step_of(got) == 4
    assert not (ck / "checkpoint-6").exists()
    assert "checkpoint-6 has no COMPLETE marker" in capsys.readouterr().err
    (ck / "checkpoint-4" / COMPLETE).unlink()
    assert resume_checkpoint(ck, is_main=True) == ck / "checkpoint-2"
    assert resume_checkpoint(tmp_path / "none", is_main=True) is None


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            kids = [int(c) for c in task.read_text().split()]
            out.extend(kids)
            todo.extend(kids)
    return out


@pytest.mark.slow
def test_torchrun_sigterm_saves_agreed_checkpoint_and_resumes_past_a_partial_one(tiny, tmp_path):
    """SIGTERM to both ranks (as Slurm's `scancel --signal=TERM` does) mid-run: they save one checkpoint at the
    same step and exit 0 without DONE; a later partial checkpoint (a save killed half-way) is skipped with a
    warning and the relaunch finishes the run."""
    import os
    import signal
    import time

    from train.hf_resume import COMPLETE, checkpoints_by_step

    data, export = tiny
    run_dir = tmp_path / "run"
    max_steps = 8
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.dpo",
           f"dpo.init_from={export}", f"dpo.data_dir={data}", f"run.dir={run_dir}", "deepspeed=zero2",
           f"trainer.max_steps={max_steps}", "trainer.save_every=0", "trainer.log_every=1",
           "trainer.progress_bar=false", "dpo.train_limit=8", "dpo.heldout_limit=4", "dpo.per_device_batch_size=1",
           "dpo.max_length=512", "wandb.mode=disabled"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 400
        while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.1)
        ranks = _descendants(proc.pid)
        assert len(ranks) >= 2
        for pid in ranks:
            os.kill(pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "[dpo] stop signal: saved checkpoint-" in out
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


def test_a_run_directory_held_by_a_live_run_is_refused_and_left_alone(tiny, tmp_path):
    """DPO takes the same one-writer lock as pretraining: a second launch into a held directory names the holder
    and changes nothing there (here the holder is this test process, standing in for a live DPO run)."""
    from data.dir_lock import RunDirLockedError, RunLock

    data, export = tiny
    run_dir = tmp_path / "run"
    with RunLock(run_dir / "run.lock"):
        with pytest.raises(RunDirLockedError, match=rf"in use by another run: pid {os.getpid()} on host"):
            _run(_cfg(data, export, run_dir))
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]


@pytest.mark.slow
def test_zero3_export_is_the_gathered_trained_policy(tiny, tmp_path):
    """Under ZeRO-3 the export goes through train.export like pretraining's (every shard gathered): it holds the
    same full weights as the HF Trainer's own gathered checkpoint, moved away from the init export."""
    from safetensors.torch import load_file

    data, export = tiny
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.dpo", f"dpo.init_from={export}", f"dpo.data_dir={data}", f"run.dir={run_dir}",
           "deepspeed=zero3", "trainer.max_steps=2", "trainer.save_every=2", "trainer.keep_last=2",
           "trainer.log_every=1", "trainer.progress_bar=false", "dpo.train_limit=4", "dpo.heldout_limit=2",
           "dpo.per_device_batch_size=2", "dpo.max_length=256", "wandb.mode=disabled"]
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
