"""train.dpo on a tiny SambaY export: bad input, on-policy pairs, checkpoint choice on resume, a held run dir.

The runs themselves (held-out metrics, resume, torchrun, ZeRO-3 export) are in test_dpo_train_resume_e2e.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.builders import build_dpo_data, dpo_cfg, run_dpo


REPO = Path(__file__).resolve().parents[2]


def test_chosen_equal_rejected_is_an_error_and_writes_nothing(dpo_tiny, tmp_path):
    data, export = dpo_tiny
    rec = json.loads((data / "preference" / "train.jsonl").read_text().splitlines()[0])
    rec["rejected"] = rec["chosen"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: record 1: chosen and rejected are identical"):
        run_dpo(dpo_cfg(data, export, tmp_path / "run", train_data=str(bad)))
    assert not (tmp_path / "run").exists()


def test_tokenizer_mismatch_is_an_error_and_writes_nothing(dpo_tiny, tmp_path):
    from data.tokenizer import TokenizerMismatchError

    _, export = dpo_tiny
    other = build_dpo_data(tmp_path / "other", vocab=300, seed=3)
    with pytest.raises(TokenizerMismatchError, match="tokenizer mismatch"):
        run_dpo(dpo_cfg(other, export, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_unknown_override_names_the_key():
    proc = subprocess.run([sys.executable, "-m", "train.dpo", "dpo.init_from=x", "dpo.bta=0.2"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "bta" in proc.stderr + proc.stdout


def test_bad_reference_mode_is_rejected():
    from train.alignment.dpo_config import DPOSection

    with pytest.raises(ValueError, match="dpo.reference"):
        DPOSection(init_from="x", reference="shared")


def test_on_policy_pairs_pair_graded_right_with_wrong(dpo_tiny, monkeypatch):
    import train.alignment.on_policy
    from data.jsonl import read_jsonl
    from train.alignment.on_policy import build_on_policy_pairs

    data, _ = dpo_tiny
    problems = read_jsonl(data / "reasoning" / "train.jsonl")[:3]
    by_prompt = {p["question"]: p for p in problems}

    def fake_generate(model, tokenizer, prompts, sampling, progress=False):
        out = []
        for prompt in prompts:
            p = next(v for q, v in by_prompt.items() if q in prompt)
            out.append([f"wrong. \\boxed{{{int(p['answer']) + 1}}}", p["solution"]][: sampling.num_samples])
        return out

    monkeypatch.setattr(train.alignment.on_policy, "generate", fake_generate)
    monkeypatch.setattr(train.alignment.on_policy, "chat_prompt", lambda tok, text: text)
    cfg = dpo_cfg(data, "unused", "unused")
    cfg.dpo.on_policy.num_problems, cfg.dpo.on_policy.sampling.num_samples = 3, 2
    pairs = build_on_policy_pairs(None, None, cfg)
    assert len(pairs) == 3
    for pair, p in zip(pairs, problems):
        assert pair["chosen"][0]["content"] == p["solution"]
        assert pair["rejected"][0]["content"].startswith("wrong")


def test_resume_takes_the_newest_complete_checkpoint_and_drops_newer_partial_ones(tmp_path, capsys):
    from train.runtime.hf_resume import COMPLETE, MarkCompleteCheckpoints, resume_checkpoint, step_of

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


def test_a_run_directory_held_by_a_live_run_is_refused_and_left_alone(dpo_tiny, tmp_path):
    """DPO takes the same one-writer lock as pretraining: a second launch into a held directory names the holder
    and changes nothing there (here the holder is this test process, standing in for a live DPO run)."""
    from data.dir_lock import RunDirLockedError, RunLock

    data, export = dpo_tiny
    run_dir = tmp_path / "run"
    with RunLock(run_dir / "run.lock"):
        with pytest.raises(RunDirLockedError, match=rf"in use by another run: pid {os.getpid()} on host"):
            run_dpo(dpo_cfg(data, export, run_dir))
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]




def test_a_stop_signal_after_the_last_step_lets_the_run_finish(dpo_tiny, tmp_path, monkeypatch):
    """SIGTERM that arrives after training (here: as the export starts) is held by the run's own handler: the run
    finishes its export and DONE instead of dying there, as the DeepSpeed engine does. Before the handlers covered
    the export, the signal fell through to the process's previous handler (on a torchrun rank: death, leaving the
    other ranks in a collective); the test's fallback handler stands in for that and must not fire."""
    import signal

    import train.dpo

    fell_through = []
    previous = signal.signal(signal.SIGTERM, lambda *a: fell_through.append(a))
    export_policy = train.dpo.export_policy

    def export_after_a_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return export_policy(*args, **kwargs)

    monkeypatch.setattr(train.dpo, "export_policy", export_after_a_signal)
    data, export = dpo_tiny
    run_dir = tmp_path / "run"
    try:
        metrics = run_dpo(dpo_cfg(data, export, run_dir))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not fell_through, "the stop signal reached the process's previous handler"
    assert metrics is not None and metrics["steps"] == 4
    assert (run_dir / "DONE").exists() and (run_dir / "export" / "config.json").is_file()
