"""train.dpo's distributed set-up: the CUDA device per local rank before the first collective, and on-policy
pairs sampled by every rank (files gather them; no collective waits on sampling)."""
import threading

import pytest
import torch

from tests.train.builders import dpo_cfg


class _StopHere(Exception):
    pass


def test_cuda_device_is_set_from_local_rank_before_any_collective(dpo_data, tmp_path, monkeypatch):
    """GPU condition emulated on CPU: CUDA reported available, set_device / the NCCL start / the model load recorded.

    Without set_device every rank's NCCL communicator, first barrier and ``model.cuda()`` land on cuda:0.
    """
    import deepspeed
    import torch.distributed as dist
    from omegaconf import OmegaConf

    import train.dpo
    from train.dpo import run

    calls = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(deepspeed, "init_distributed",
                        lambda dist_backend, **kw: calls.append(("init_process_group", dist_backend)))
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)

    def load_export(path):
        calls.append(("load_model", str(path)))
        raise _StopHere

    monkeypatch.setattr(train.dpo, "load_export", load_export)
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    cfg = dpo_cfg(dpo_data, export, tmp_path / "run", check_tokenizer=False)
    with pytest.raises(_StopHere):
        run(cfg, OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    assert calls[:3] == [("set_device", 1), ("init_process_group", "nccl"), ("load_model", str(export))]


def _fake_generate(by_question):
    def generate(model, tokenizer, prompts, sampling, progress=False):
        out = []
        for prompt in prompts:
            p = next(v for q, v in by_question.items() if q in prompt)
            out.append([f"wrong. \\boxed{{{int(p['answer']) + 1}}}", p["solution"]][: sampling.num_samples])
        return out

    return generate


def test_on_policy_pairs_are_sampled_by_every_rank_and_merged_in_order(dpo_data, tmp_path, monkeypatch):
    import train.alignment.on_policy
    from data.jsonl import read_jsonl
    from train.alignment.on_policy import gather_on_policy_pairs

    problems = read_jsonl(dpo_data / "reasoning" / "train.jsonl")[:5]
    sampled = []  # (thread, question): which rank sampled which problem
    fake = _fake_generate({p["question"]: p for p in problems})

    def recording_generate(model, tokenizer, prompts, sampling, progress=False):
        sampled.extend((threading.current_thread().name, p) for p in prompts)
        return fake(model, tokenizer, prompts, sampling, progress)

    monkeypatch.setattr(train.alignment.on_policy, "generate", recording_generate)
    monkeypatch.setattr(train.alignment.on_policy, "chat_prompt", lambda tok, text: text)
    cfg = dpo_cfg(dpo_data, "unused", "unused")
    cfg.dpo.on_policy.num_problems, cfg.dpo.on_policy.sampling.num_samples = 5, 2
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    errors = []

    def rank(r):
        try:
            gather_on_policy_pairs(cfg, None, None, run_dir, rank=r, world_size=2, poll_s=0.02)
        except Exception as e:  # surfaced below
            errors.append(e)

    # Rank 1 starts first and waits (polling files, no collective) for rank 0's part and the merged file.
    threads = [threading.Thread(target=rank, args=(r,), name=f"rank{r}") for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    by_rank = {name: [q for n, q in sampled if n == name] for name in ("rank0", "rank1")}
    assert len(by_rank["rank0"]) == 2 and len(by_rank["rank1"]) == 3  # each problem sampled once, split 2 / 3
    merged = read_jsonl(run_dir / "on_policy_pairs.jsonl")
    assert [m["chosen"][0]["content"] for m in merged] == [p["solution"] for p in problems]
    # A relaunch reuses the merged pairs and samples nothing.
    sampled.clear()
    assert gather_on_policy_pairs(cfg, None, None, run_dir, rank=0, world_size=2) == run_dir / "on_policy_pairs.jsonl"
    assert sampled == []


