"""The DPO contract command on one's own preference data (slow):

    torchrun --nproc_per_node=N -m train.dpo --config-name finetune dpo.init_from=... dpo.train_data=PREFS run.dir=...

with a standard-format JSONL from a sambay export, and an implicit-prompt conversational Parquet file from a
published-layout hub snapshot (tests/train/hub_snapshot.py); a held-out split is taken and printed, the policy
trains a few steps, is scored on the held-out pairs and exported."""
import json
import math
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.train.builders import REPO, env, free_port
from tests.train.hub_snapshot import build_hub_snapshot

# Small enough for 2 shared CPU cores; max_length holds every whole pair (chosen and rejected differ late, a shorter
# cut would make them the same tokens). The finetune recipe's other settings (ZeRO-2, precision auto, reference
# precomputed, epochs-based steps capped here) are kept.
CPU = ["trainer.max_steps=3", "trainer.save_every=0", "trainer.log_every=1", "trainer.progress_bar=false",
       "wandb.mode=disabled", "dpo.max_length=320", "dpo.per_device_batch_size=2", "dpo.gradient_accumulation_steps=1",
       "dpo.gradient_checkpointing=false", "dpo.lr=1.0e-3", "dpo.warmup_steps=0", "dpo.heldout_batch_size=4"]


def _prepared_pairs(dpo_data, n):
    return [json.loads(line) for line in (dpo_data / "preference" / "train.jsonl").read_text().splitlines()[:n]]


def _dpo(init_from, prefs, run_dir, nproc=1):
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                 f"--master_port={free_port()}"] if nproc else [sys.executable])
    cmd = [*launcher, "-m", "train.dpo", "--config-name", "finetune", f"dpo.init_from={init_from}",
           f"dpo.train_data={prefs}", f"run.dir={run_dir}", *CPU]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p.stdout


def _check_run(run_dir, out, n_pairs):
    held = max(1, round(0.05 * n_pairs))
    assert f"[dpo] held-out split: {held} of {n_pairs} pairs of dpo.train_data" in out
    assert "[dpo] trainer.max_steps=3 at 2 pairs per step" in out
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2, 3] and all(math.isfinite(m["loss"]) for m in steps)
    metrics = json.loads((run_dir / "dpo_heldout.json").read_text())
    assert metrics["heldout_pairs"] == held and metrics["train_pairs"] == n_pairs - held and metrics["steps"] == 3
    # The policy moved away from the reference on the held-out pairs (lr 1e-3, 3 steps).
    assert metrics["heldout_logp_margin_policy"] != metrics["heldout_logp_margin_ref"]
    assert (run_dir / "export" / "config.json").is_file() and (run_dir / "DONE").is_file()


@pytest.mark.slow
def test_standard_format_jsonl_from_a_sambay_export_with_torchrun(dpo_tiny, tmp_path):
    data, export = dpo_tiny
    pairs = [{"prompt": p["prompt"][0]["content"], "chosen": p["chosen"][0]["content"],
              "rejected": p["rejected"][0]["content"]} for p in _prepared_pairs(data, 24)]
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = _dpo(export, prefs, tmp_path / "run")
    _check_run(tmp_path / "run", out, 24)


@pytest.mark.slow
def test_implicit_prompt_conversational_parquet_from_a_hub_snapshot(dpo_data, tmp_path):
    from data.tokenizer import load_tokenizer
    from train.runtime.model_build import load_export

    hub = build_hub_snapshot(tmp_path / "hub")
    pairs = [{"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"]}
             for p in _prepared_pairs(dpo_data, 20)]
    prefs = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(pairs), prefs)
    out = _dpo(hub, prefs, tmp_path / "run", nproc=0)
    _check_run(tmp_path / "run", out, 20)
    policy, tok = load_export(tmp_path / "run" / "export"), load_tokenizer(tmp_path / "run" / "export")
    assert policy.config.vocab_size == json.loads((hub / "config.json").read_text())["vocab_size"]
    assert tok.apply_chat_template(pairs[0]["chosen"][:1], tokenize=False, add_generation_prompt=True).endswith(
        "<|end|><|assistant|>")  # the snapshot's published template came along
