"""The fine-tuning contract end to end: `train.sft --config-name finetune` from a tiny snapshot in the published
layout (sharded bf16, GPT-2 style tokenizer, the published template without markers) on chat data in TRL's formats,
1 rank and a 2-rank torchrun, with no prepare step."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from data.shards import read_manifest
from data.tokenizer import fingerprint
from tests.train.builders import REPO, env, free_port
from tests.train.hub_snapshot import build_hub_snapshot

pytestmark = pytest.mark.slow
TINY_RUN = ["sft.seq_len=64", "data.global_batch_tokens=256", "trainer.log_every=1", "trainer.progress_bar=false",
            "trainer.eval_batches=1"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    hub = build_hub_snapshot(root / "hub")
    chats = [{"messages": [{"role": "user", "content": f"what is {i} plus 3?"},
                           {"role": "assistant", "content": f"The answer is {i + 3}."}]} for i in range(30)]
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats))
    Dataset.from_list([{"prompt": f"what is {i} plus {i}?", "completion": f"The answer is {2 * i}."}
                       for i in range(20)]).to_parquet(str(root / "pc.parquet"))
    (root / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats[:4]))
    return root, hub


def launch(args, nproc):
    entry = ["-m", "train.sft", "--config-name", "finetune", *args]
    cmd = [sys.executable, *entry] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                       f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
                                                       *entry]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p.stdout + p.stderr


def check_run(out: Path, hub: Path, steps: int) -> dict:
    assert (out / "DONE").is_file() and (out / "export" / "config.json").is_file()
    (cache,) = [p for p in (out / "data").iterdir() if p.is_dir()]
    manifest = read_manifest(cache)
    assert manifest["tokenizer"]["fingerprint"] == fingerprint(hub)
    assert not list((out / "data").rglob("*.safetensors"))  # tokens only, never the checkpoint's weights
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == steps and any("val_loss" in r for r in rows)
    return manifest


def test_finetune_from_a_hub_snapshot_on_1_and_2_ranks(inputs):
    root, hub = inputs
    data = f"sft.train_data=[{root / 'chat.jsonl'},{root / 'pc.parquet'}]"
    log = launch([f"sft.init_from={hub}", data, f"sft.eval_data={root / 'held.jsonl'}", f"run.dir={root / 'one'}",
                  "trainer.max_steps=3", "trainer.eval_every=3", *TINY_RUN], nproc=1)
    assert "held out (sft.eval_data): 4 conversations" in log
    splits = check_run(root / "one", hub, 3)["splits"]
    assert splits["train"]["documents"] == 50 and splits["val"]["documents"] == 4
    launch([f"sft.init_from={hub}", f"sft.train_data={root / 'chat.jsonl'}", "sft.eval_fraction=0.2",
            f"run.dir={root / 'two'}", "trainer.max_steps=2", "trainer.eval_every=2", *TINY_RUN], nproc=2)
    splits = check_run(root / "two", hub, 2)["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 30
