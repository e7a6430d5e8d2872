"""The training-stage parts of bench/gpu_check.py: each runs a project entry point through its documented command
line (``python -m data.prepare``, ``torchrun -m train.pretrain`` / ``train.sft`` / ``train.dpo`` with Hydra
overrides) and reads its figures from what the run writes (``metrics.jsonl``, ``dpo_heldout.json``, stdout) and
from bench/gpu_check_probe.py, which wraps the entry point to observe the dtype the matmuls ran in and the peak
memory. No trainer internals are imported: these parts check what users run.

Every function takes ``(sz, work, limit_s)`` and returns a JSON-able dict (``{"skipped": why}`` when a part it
depends on left nothing to start from); a run that fails raises :class:`StageFailed` with its log's tail and the
figures it still measured (a pretraining run past its limit keeps its logged windows). The runs write no final
checkpoint (``trainer.final_checkpoint=false``): only the export the next stage starts from.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import statistics
import sys
from pathlib import Path

from bench.gpu_check_run import StageFailed, must_finish, run_logged
from bench.gpu_check_sizes import Sizes
from data.layout import PreparedData
from sambay_model import Phi4FlashConfig
from train.engine.flops import flops_per_token

REPO = Path(__file__).resolve().parents[1]
NESTED_AUTOCAST_WARNING = "disabled within the DeepSpeed engine"
SFT_STAGE = "long_cot"  # the 32K stage of recipes/sft/phi4_mini_flash_reasoning.yaml
SFT_DATA_STAGE = "math"  # the demo prepare recipe's all-families stage (index 1); stage 0 is kept small


def data_dir(work: Path) -> PreparedData:
    return PreparedData(work / "data")


def run_dir(work: Path, name: str) -> Path:
    return work / "runs" / name


def torchrun(probe_out: Path, module: str, args: list[str]) -> list[str]:
    """``torchrun --nproc_per_node=1 -m MODULE ARGS`` with the probe in front (it runs MODULE via runpy)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
            "bench.gpu_check_probe", str(probe_out), module, *args]


def toy_overrides(sz: Sizes) -> list[str]:
    return [f"model.{k}={v}" for k, v in sz.toy_model.items()]


def dtype_shares(probe: dict) -> dict[str, float]:
    flops = probe.get("linear_flops_by_dtype", {})
    total = sum(flops.values()) or 1.0
    return {k: round(v / total, 4) for k, v in sorted(flops.items())}


def probe_figures(probe_path: Path) -> dict:
    if not probe_path.is_file():
        return {"probe": "missing (the run died before its exit hooks)"}
    probe = json.loads(probe_path.read_text())
    out = {"matmul_flops_share_by_dtype": dtype_shares(probe),
           "lm_head_flops_by_dtype": probe.get("lm_head_flops_by_dtype"),
           "linear_weight_dtypes": probe.get("linear_weight_dtypes"),
           "autocast_enabled_in_linears": probe.get("autocast_enabled_in_linears"),
           "fp32_kept_params": sorted(set(probe.get("kept", {}).values())), "compile": probe.get("compile"),
           "peak_rss_gib": round(probe.get("peak_rss_gib", 0.0), 3)}
    for key in ("peak_memory_gib", "peak_reserved_gib"):
        if key in probe:
            out[key] = round(probe[key], 3)
    return out


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------------- data
def write_corpus(path: Path, chars: int, seed: int = 0) -> int:
    """Synthetic documents (JSON Lines, one ``text`` each) of words drawn from the repository's own docs.

    Throughput does not depend on what the text says, and the GPU machine has no network for a real corpus."""
    words = sorted(set(re.findall(r"[A-Za-z][A-Za-z'-]{1,14}", (REPO / "README.md").read_text())))
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    written, docs = 0, 0
    with open(path, "w") as f:
        while written < chars:
            n = rng.randint(40, 1500)
            text = " ".join(rng.choice(words) for _ in range(n)) + "."
            f.write(json.dumps({"text": text}) + "\n")
            written += len(text)
            docs += 1
    return docs


def data(sz: Sizes, work: Path, limit_s: float) -> dict:
    """``python -m data.prepare --config-name demo`` on a synthetic corpus: tokenizer, shards, SFT, preference."""
    corpus = work / "corpus" / "synthetic.jsonl"
    docs = write_corpus(corpus, sz.corpus_chars)
    tok = [f"tokenizer.kind={sz.tokenizer_kind}"]
    if sz.tokenizer_kind == "bpe":
        tok += [f"tokenizer.vocab_size={sz.bpe_vocab}", f"tokenizer.train_chars={sz.corpus_chars}"]
    out = data_dir(work)
    args = ["--config-name", "demo", f"out_dir={out.root}", f"corpus.files=[{corpus}]",
            f"num_proc={max(1, min(8, (os.cpu_count() or 2) // 2))}", *tok, "reasoning.n_train=64",
            "reasoning.n_heldout=32",
            "sft.0.n_examples=16", f"sft.1.n_examples={sz.sft_examples}",
            f"preference.n_train={sz.preference_pairs}", f"preference.n_heldout={sz.preference_pairs}"]
    _, seconds = must_finish(run_logged([sys.executable, "-m", "data.prepare", *args], work / "data.log", limit_s,
                                        work))
    manifest = json.loads((out.pretrain / "manifest.json").read_text())
    sft_manifest = json.loads((out.sft_shards(SFT_DATA_STAGE) / "manifest.json").read_text())
    return {"seconds_prepare": round(seconds, 1), "corpus_documents": docs,
            "tokenizer": sz.tokenizer_kind, "vocab_size": manifest["tokenizer"]["vocab_size"],
            "pretrain_tokens": {s: v["tokens"] for s, v in manifest["splits"].items()},
            "sft_tokens": {s: v["tokens"] for s, v in sft_manifest["splits"].items()}}


# --------------------------------------------------------------------------------------------------- pretrain
def _window_figures(records: list[dict], window_tokens: int) -> dict:
    """tokens/s and MFU of the logged windows after the first one (which holds start-up and kernel compiles), and
    an estimate of what the first window spent beyond a steady one (compiles and warm-up): the difference of
    their durations, ``window_tokens`` / tokens_per_s each."""
    windows = [r for r in records if "tokens_per_s" in r]
    steady = windows[1:] or windows
    if not steady:
        raise StageFailed("metrics.jsonl has no record with tokens_per_s")
    steady_tps = statistics.median(r["tokens_per_s"] for r in steady)
    return {"tokens_per_s": round(steady_tps, 1),
            "first_window_excess_s_estimate": round(window_tokens / windows[0]["tokens_per_s"]
                                                    - window_tokens / steady_tps, 2) if len(windows) > 1 else None,
            "mfu": round(statistics.median(r["mfu"] for r in steady), 4),
            "windows": [{"step": r["step"], "tokens_per_s": round(r["tokens_per_s"], 1), "mfu": round(r["mfu"], 4)}
                        for r in windows],
            "losses": [round(r["loss"], 4) for r in windows]}


def _flop_figures(export: Path, seq_len: int) -> dict:
    cfg = Phi4FlashConfig.from_pretrained(str(export))
    fl = flops_per_token(cfg, seq_len)
    return {"train_flops_per_token": fl.train,
            "attention_core_share_of_flops": round(fl.attention_core / fl.forward, 4),
            "lm_head_share_of_flops": round(fl.lm_head / fl.forward, 4), "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers}


def backend_for(sz: Sizes) -> str:
    return "triton" if sz.device == "cuda" else "auto"  # auto is pure PyTorch on CPU


def pretrain_args(sz: Sizes, work: Path) -> list[str]:
    """The Hydra overrides of the pretrain part: the recipe, shrunk only in steps and global batch (and, on CPU, in
    widths); micro-batch, sequence length and activation checkpointing stay the recipe's."""
    args = ["--config-name", "sambay_1b", "run.name=gpu_check_pretrain", f"run.dir={run_dir(work, 'pretrain')}",
            f"data.sources=[{{path: {data_dir(work).pretrain}, weight: 1.0}}]", f"data.seq_len={sz.pretrain_seq}",
            f"data.micro_batch_rows={sz.pretrain_micro_rows}", f"data.global_batch_tokens={sz.pretrain_batch_tokens}",
            f"trainer.max_steps={sz.pretrain_steps}", f"trainer.log_every={sz.pretrain_log_every}",
            "trainer.save_every=0", "trainer.final_checkpoint=false", "trainer.eval_every=0",
            "trainer.progress_bar=false", "deepspeed=zero2",
            "deepspeed.precision=bf16", f"model.compute_backend={backend_for(sz)}", "wandb.mode=disabled",
            *toy_overrides(sz)]
    if sz.device != "cuda":
        args.append("trainer.peak_flops_per_device=1.0e+11")  # a nominal CPU peak, so MFU is a number here too
    return args


def pretrain(sz: Sizes, work: Path, limit_s: float) -> dict:
    """bf16 (``deepspeed.precision=bf16``, ZeRO-2) pretraining of recipes/model/sambay_1b on packed rows."""
    if not (data_dir(work).pretrain / "manifest.json").is_file():
        return {"skipped": "no pretraining shards (the data part did not finish)"}
    rd, backend, args = run_dir(work, "pretrain"), backend_for(sz), pretrain_args(sz, work)
    probe = work / "probe_pretrain.json"
    run = run_logged(torchrun(probe, "train.pretrain", args), work / "pretrain.log", limit_s, work)
    text, seconds, why = run
    records = read_metrics(rd / "metrics.jsonl")
    out = {"recipe": "recipes/pretrain/sambay_1b.yaml", "compute_backend": backend, "seconds_run": round(seconds, 1),
           "rows_x_seq": [sz.pretrain_batch_tokens // sz.pretrain_seq, sz.pretrain_seq], "steps": sz.pretrain_steps,
           "nested_autocast_warning": NESTED_AUTOCAST_WARNING in text, "overrides": args}
    if any("tokens_per_s" in r for r in records):  # read even when the run overran: its windows were measured
        out.update(_window_figures(records, sz.pretrain_batch_tokens * sz.pretrain_log_every))
    precision = re.search(r"precision (torch\.\w+)", text)
    out["precision_logged"] = precision.group(1) if precision else None
    must_finish(run, out)
    out.update(_flop_figures(rd / "export", sz.pretrain_seq), **probe_figures(probe))
    out["checkpoints_written"] = sorted(c.name for c in (rd / "checkpoints").glob("*"))  # none is expected
    shutil.rmtree(rd / "checkpoints", ignore_errors=True)
    if "tokens_per_s" not in out:
        raise StageFailed("metrics.jsonl has no record with tokens_per_s", out)
    return out


# ------------------------------------------------------------------------------------------------------- sft
def sft_args(sz: Sizes, work: Path) -> list[str]:
    """The recipe with its stages replaced by its 32K stage on the prepared SFT set, one step of one row."""
    shards = data_dir(work).sft_shards(SFT_DATA_STAGE)
    stage = (f"sft.stages=[{{name: {SFT_STAGE}, sources: [{{path: {shards}, weight: 1.0}}], seq_len: {sz.sft_seq}, "
             f"lr: 5.0e-6, max_steps: 1}}]")
    return ["--config-name", "phi4_mini_flash_reasoning", "run.name=gpu_check_sft", f"run.dir={run_dir(work, 'sft')}",
            f"sft.init_from={run_dir(work, 'pretrain') / 'export'}", stage, f"data.global_batch_tokens={sz.sft_seq}",
            "data.micro_batch_rows=1", "trainer.max_steps=1", "trainer.log_every=1", "trainer.save_every=0",
            "trainer.final_checkpoint=false", "trainer.export=false", "trainer.progress_bar=false",
            "deepspeed.precision=bf16",
            f"model.compute_backend={backend_for(sz)}", "wandb.mode=disabled"]


def sft(sz: Sizes, work: Path, limit_s: float) -> dict:
    """One step of recipes/sft/phi4_mini_flash_reasoning.yaml's 32K stage (ZeRO-3, bf16, checkpointing)."""
    export = run_dir(work, "pretrain") / "export"
    if not (export / "config.json").is_file():
        return {"skipped": "no pretrained export to start from (the pretrain part did not finish)"}
    rd, args = run_dir(work, "sft"), sft_args(sz, work)
    probe = work / "probe_sft.json"
    text, seconds = must_finish(run_logged(torchrun(probe, "train.sft", args), work / "sft.log", limit_s, work))
    records = [r for r in read_metrics(rd / SFT_STAGE / "metrics.jsonl") if "loss" in r]
    if not records:
        raise StageFailed(f"{rd / SFT_STAGE / 'metrics.jsonl'} has no step record")
    shutil.rmtree(rd, ignore_errors=True)
    return {"recipe": "recipes/sft/phi4_mini_flash_reasoning.yaml", "stage": SFT_STAGE, "tokens_per_row": sz.sft_seq,
            "rows": 1, "seconds_run": round(seconds, 1), "loss": round(records[-1]["loss"], 4),
            "step_tokens_per_s": round(records[-1]["tokens_per_s"], 1), **probe_figures(probe),
            "nested_autocast_warning": NESTED_AUTOCAST_WARNING in text, "overrides": args}


# ------------------------------------------------------------------------------------------------------- dpo
def dpo_args(sz: Sizes, work: Path) -> list[str]:
    """The GPU recipe on the prepared offline pairs (no on-policy sampling), a few steps."""
    n_pairs = sz.dpo_steps * sz.dpo_pairs_per_step
    return ["--config-name", "gpu", "run.name=gpu_check_dpo", f"run.dir={run_dir(work, 'dpo')}",
            f"dpo.init_from={run_dir(work, 'pretrain') / 'export'}", f"dpo.data_dir={data_dir(work).root}",
            "dpo.on_policy.enabled=false", f"trainer.max_steps={sz.dpo_steps}", "trainer.log_every=1",
            "trainer.save_every=0", "trainer.final_checkpoint=false", "trainer.progress_bar=false",
            f"dpo.per_device_batch_size={sz.dpo_pairs_per_step}",
            "dpo.gradient_accumulation_steps=1", f"dpo.train_limit={n_pairs}",
            f"dpo.heldout_limit={2 * sz.dpo_pairs_per_step}", f"dpo.heldout_batch_size={sz.dpo_pairs_per_step}",
            f"dpo.max_length={sz.dpo_max_length}", "wandb.mode=disabled"]


def dpo(sz: Sizes, work: Path, limit_s: float) -> dict:
    """A few steps of recipes/dpo/gpu.yaml (TRL DPOTrainer, ZeRO-2, bf16, frozen reference) on offline pairs."""
    export = run_dir(work, "pretrain") / "export"
    if not (export / "config.json").is_file():
        return {"skipped": "no pretrained export to start from (the pretrain part did not finish)"}
    rd, args = run_dir(work, "dpo"), dpo_args(sz, work)
    probe = work / "probe_dpo.json"
    text, seconds, why = run_logged(torchrun(probe, "train.dpo", args), work / "dpo.log", limit_s, work)
    records = [r for r in read_metrics(rd / "metrics.jsonl") if "loss" in r]
    if why:
        raise StageFailed(why, {"steps_logged": len(records), "losses": [round(r["loss"], 4) for r in records]})
    if len(records) < sz.dpo_steps:
        raise StageFailed(f"{rd / 'metrics.jsonl'}: {len(records)} step records, expected {sz.dpo_steps}")
    heldout = json.loads((rd / "dpo_heldout.json").read_text())
    # The HF Trainer's end-of-training summary line (stdout): its own wall time of the training steps.
    runtime = dict(re.findall(r"'(train_runtime|train_steps_per_second)': '([0-9.]+)'", text))
    keep = ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected", "grad_norm")
    shutil.rmtree(rd, ignore_errors=True)
    return {"recipe": "recipes/dpo/gpu.yaml", "steps": len(records), "pairs_per_step": sz.dpo_pairs_per_step,
            "max_length": sz.dpo_max_length, "seconds_run": round(seconds, 1),
            "train_runtime_s": float(runtime["train_runtime"]) if "train_runtime" in runtime else None,
            "train_steps_per_s": float(runtime["train_steps_per_second"]) if runtime else None,
            "losses": [round(r["loss"], 4) for r in records],
            "last_step": {k: records[-1][k] for k in keep if k in records[-1]},
            "heldout": {k: v for k, v in heldout.items() if isinstance(v, (int, float))}, **probe_figures(probe),
            "nested_autocast_warning": NESTED_AUTOCAST_WARNING in text, "overrides": args}
