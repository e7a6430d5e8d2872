"""Shared builders of the tests/train/ tests: tiny tokenizers, shard sets, exports, configs and the subprocess
commands that run the entry points on them (module fixtures built from these live in conftest.py)."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]


# Pretraining (train.pretrain) on a tiny model and random shards.
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



# Adam's first step is lr * g / (|g| + eps): with the default eps 1e-8 a gradient entry near zero turns
# summation-order noise (1 rank vs 2) into an O(lr) difference. A larger eps keeps the update a smooth function
# of the gradient, so comparing parameters after one step still tests that the accumulated gradients agree.
ONE_STEP = ["trainer.max_steps=1", "trainer.log_every=1", "trainer.export=false", "data.global_batch_tokens=128",
            "optim.eps=1.0e-3"]


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


# Processes: whether a pid still runs, waiting for pids to end.
def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (PID 1 in a container may not reap it)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a torchrun agent's ranks and their children), from /proc."""
    out, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            kids = [int(c) for c in task.read_text().split()]
            out.extend(kids)
            todo.extend(kids)
    return out


def wait_gone(pids, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


# DPO (train.dpo): reasoning + preference JSONL, a tiny export, a run config.
def build_dpo_data(root: Path, vocab: int = 320, seed: int = 0) -> Path:
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


def build_dpo_export(data_dir: Path, out: Path) -> Path:
    from data.tokenizer import load_tokenizer
    from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
    from train.runtime.export import save_export

    tok = load_tokenizer(data_dir / "tokenizer")
    cfg = Phi4FlashConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                          num_attention_heads=2, num_key_value_heads=2, sliding_window=32,
                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    save_export(Phi4FlashForCausalLM(cfg), data_dir / "tokenizer", out)
    return out


def dpo_cfg(data, export, run_dir, **dpo):
    from train.alignment.dpo_config import DPORunConfig

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


def run_dpo(cfg):
    from omegaconf import OmegaConf

    from train.dpo import run

    return run(cfg, OmegaConf.to_yaml(OmegaConf.structured(cfg)))



# Evaluation (train.evaluate): the DPO data plus a pretrain shard set of the same texts.
def build_eval_data(root: Path, vocab: int = 320, seed: int = 0) -> Path:
    from data.jsonl import write_jsonl
    from data.preference import pairs_from_corruptions
    from data.reasoning import generate_problems
    from data.shards import ShardSetWriter, tokenizer_info
    from data.tokenizer import load_tokenizer, train_bpe_tokenizer

    train = generate_problems(40, "train", seed=seed)
    heldout = generate_problems(12, "heldout", seed=seed + 1)
    texts = [p["question"] + " " + p["solution"] for p in train + heldout]
    train_bpe_tokenizer(texts[: 30 + seed], vocab, root / "tokenizer")
    write_jsonl(root / "reasoning" / "train.jsonl", train)
    write_jsonl(root / "reasoning" / "heldout.jsonl", heldout)
    write_jsonl(root / "preference" / "train.jsonl", pairs_from_corruptions(train, seed=0))
    write_jsonl(root / "preference" / "heldout.jsonl", pairs_from_corruptions(heldout, seed=1))
    tok = load_tokenizer(root / "tokenizer")
    with ShardSetWriter(root / "pretrain", "pretrain", tokenizer_info(root / "tokenizer"), ["test"]) as w:
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            w.add("train", ids)
            w.add("val", ids)
    return root


def build_eval_export(data_dir: Path, out: Path, seed: int = 0) -> Path:
    from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
    from train.runtime.export import save_export

    from data.tokenizer import load_tokenizer

    tok = load_tokenizer(data_dir / "tokenizer")
    cfg = Phi4FlashConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                          num_attention_heads=2, num_key_value_heads=2, sliding_window=32,
                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    save_export(Phi4FlashForCausalLM(cfg), data_dir / "tokenizer", out)
    return out



def build_harness_tiny(root: Path) -> tuple[Path, Path]:
    """(data dir, export dir) for the lm-eval harness: a tokenizer, held-out reasoning problems, a tiny export."""
    from data.jsonl import write_jsonl
    from data.reasoning import generate_problems
    from data.tokenizer import load_tokenizer, train_bpe_tokenizer
    from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
    from train.runtime.export import save_export

    data = root / "data"
    heldout = generate_problems(6, "heldout", seed=1)
    train_bpe_tokenizer([p["question"] + " " + p["solution"] for p in heldout], 300, data / "tokenizer")
    write_jsonl(data / "reasoning" / "heldout.jsonl", heldout)
    tok = load_tokenizer(data / "tokenizer")
    cfg = Phi4FlashConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                          num_attention_heads=2, num_key_value_heads=2, sliding_window=32,
                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    save_export(Phi4FlashForCausalLM(cfg), data / "tokenizer", root / "export")
    return data, root / "export"


# Multi-stage SFT (train.sft): tokenizer, SFT shard sets, an initial export, stage overrides.
def make_tokenizer(root: Path, seed: int) -> dict:
    from data.shards import tokenizer_info
    from data.tokenizer import train_bpe_tokenizer

    # Digits are single tokens in our BPE, so the seed must change the words for two tokenizers to differ.
    word = "".join(chr(97 + (seed * 7 + k) % 26) for k in range(6))
    train_bpe_tokenizer([f"sft corpus {word} line {i} {i * 5}" for i in range(100)], 300, root / "tokenizer")
    return tokenizer_info(root / "tokenizer")


def make_sft_shards(out: Path, info: dict, kind: str = "sft", seed: int = 0) -> Path:
    from data.shards import ShardSetWriter

    rng = np.random.default_rng(seed)
    with ShardSetWriter(out, kind, info, ["random"]) as w:
        for _ in range(60):
            n = int(rng.integers(8, 40))
            tokens = rng.integers(1, info["vocab_size"], size=n)
            if kind == "sft":
                mask = np.zeros(n, dtype=np.uint8)
                mask[n // 2:] = 1  # the "assistant" half
                w.add("train", tokens, mask)
            else:
                w.add("train", tokens)
    return out


def make_init_export(root: Path) -> Path:
    """A freshly initialised tiny model exported like train.pretrain does (the stage-1 starting point)."""
    from train.config import ModelConfig
    from train.runtime.export import save_export
    from train.runtime.model_build import build_fresh, hf_config

    mc = ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4,
                     num_key_value_heads=2, sliding_window=8, vocab_size=320)
    model = build_fresh(hf_config(mc, vocab_size=320, eos_token_id=0), "cpu", seed=0)
    save_export(model, root / "tokenizer", root / "init")
    return root / "init"


def stages_override(a, b):
    return ("sft.stages=[{name:one,sources:[{path:%s,weight:1.0}],seq_len:32,lr:1.0e-3,max_steps:2},"
            "{name:two,sources:[{path:%s,weight:1.0}],seq_len:48,lr:5.0e-4,max_steps:3}]" % (a, b))


def base_overrides(sft_setup, run_dir):
    return [f"run.dir={run_dir}", f"sft.init_from={sft_setup['init']}", stages_override(sft_setup["a"], sft_setup["b"]),
            "data.global_batch_tokens=192", "data.micro_batch_rows=2", "trainer.log_every=1",
            "trainer.progress_bar=false", "trainer.save_every=100"]


def greedy_continuation(model, prompt_ids: list[int], stops, max_new: int) -> list[int]:
    """Greedy decoding written out, to check generation against: a full forward pass per token (no cache, no
    padding), argmax, stop at a stop id."""
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(torch.tensor([prompt_ids + new])).logits[0, -1].argmax())
            if nxt in stops:
                break
            new.append(nxt)
    return new
