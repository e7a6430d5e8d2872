"""LoRA (`peft.enabled=true`) through the fine-tuning contract commands, end to end from a tiny snapshot in the
published layout: SFT on 2 ranks under ZeRO-2, SFT on 1 rank under ZeRO-3 with a resume from its checkpoint, and DPO
from the SFT export. Each export is a hub snapshot with the merged weights; the adapter beside it loads with peft and
reproduces them; the base weights never move. The fast tests are in test_lora.py."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from tests.train.builders import REPO, env, free_port
from tests.train.hub_snapshot import build_hub_snapshot
from train.config import LORA_TARGET_MODULES

pytestmark = pytest.mark.slow
TINY_SFT = ["peft.enabled=true", "sft.seq_len=64", "data.global_batch_tokens=256", "trainer.log_every=1",
            "trainer.progress_bar=false", "trainer.eval_every=0", "sft.lr=1e-2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    hub = build_hub_snapshot(root / "hub")
    chats = [{"messages": [{"role": "user", "content": f"what is {i} plus 3?"},
                           {"role": "assistant", "content": f"The answer is {i + 3}."}]} for i in range(30)]
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats))
    prefs = [{"prompt": f"what is {i} plus {i}?", "chosen": f" The answer is {2 * i}.",
              "rejected": f" The answer is {2 * i + 1}."} for i in range(24)]
    (root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs))
    return root, hub


def launch(module: str, args: list[str], nproc: int) -> str:
    entry = ["-m", module, "--config-name", "finetune", *args]
    cmd = [sys.executable, *entry] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                       f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
                                                       *entry]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p.stdout + p.stderr


def tensors(snapshot: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(snapshot.glob("model*.safetensors")):
        out.update(load_file(str(file)))
    return out


def check_lora_export(run_dir: Path, init: Path) -> dict[str, torch.Tensor]:
    """The export is a hub snapshot like ``init`` with merged weights (only adapted projections changed), and the
    adapter beside it, applied to ``init`` with peft, gives those weights. Returns the exported tensors."""
    from train.runtime.model_build import load_export

    export, stored = run_dir / "export", tensors(init)
    written = tensors(export)
    assert (export / "config.json").read_bytes() == (init / "config.json").read_bytes()
    assert {k: (v.dtype, v.shape) for k, v in written.items()} == {k: (v.dtype, v.shape) for k, v in stored.items()}
    changed = {k for k in written if not torch.equal(written[k], stored[k])}
    assert changed, "the merged export equals its input"
    assert all(k.rsplit(".", 2)[-2] in LORA_TARGET_MODULES for k in changed), sorted(changed)[:5]
    merged = PeftModel.from_pretrained(load_export(init), str(run_dir / "adapter")).merge_and_unload().state_dict()
    for k in changed:
        torch.testing.assert_close(written[k].float(), merged[k], rtol=1e-2, atol=1e-2, msg=k)  # bf16 rounding
    return written


def base_in_checkpoint_is_the_input(run_dir: Path, init: Path) -> None:
    """ZeRO-2's module states hold every weight: the frozen base ones equal the input's, the adapters moved."""
    ckpt = run_dir / "checkpoints"
    module = torch.load(ckpt / (ckpt / "latest").read_text().strip() / "mp_rank_00_model_states.pt",
                        weights_only=False)["module"]
    stored = tensors(init)
    prefix = "base_model.model."
    base = {k.removeprefix(prefix).replace(".base_layer", ""): v for k, v in module.items() if ".lora_" not in k}
    assert all(torch.equal(base[k], v.float()) for k, v in stored.items())
    assert any(v.abs().sum() > 0 for k, v in module.items() if ".lora_B." in k)


def test_sft_with_lora_on_2_ranks_zero2_then_dpo_with_lora_on_2_ranks_zero3(inputs):
    root, hub = inputs
    sft = root / "sft2"
    launch("train.sft", [f"sft.init_from={hub}", f"sft.train_data={root / 'chat.jsonl'}", f"run.dir={sft}",
                         "trainer.max_steps=3", *TINY_SFT], nproc=2)
    check_lora_export(sft, hub)
    base_in_checkpoint_is_the_input(sft, hub)
    dpo = root / "dpo"
    args = [f"dpo.init_from={sft / 'export'}", f"dpo.train_data={root / 'prefs.jsonl'}", f"run.dir={dpo}",
            "peft.enabled=true", "trainer.max_steps=2", "trainer.save_every=1", "trainer.log_every=1",
            "trainer.progress_bar=false", "dpo.gradient_accumulation_steps=1", "dpo.max_length=128", "dpo.lr=1e-2",
            "dpo.gradient_checkpointing=false", "deepspeed=zero3"]
    launch("train.dpo", args, nproc=2)
    first = check_lora_export(dpo, sft / "export")
    assert (dpo / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    # As if killed while saving step 2: the relaunch resumes from the HF Trainer's checkpoint-1 and ends the same.
    for path in ("DONE", "export", "adapter", "checkpoints/checkpoint-2/COMPLETE"):
        shutil.rmtree(dpo / path) if (dpo / path).is_dir() else (dpo / path).unlink()
    log = launch("train.dpo", args, nproc=2)
    assert "resuming from" in log and "checkpoint-1" in log, log[-3000:]
    second = check_lora_export(dpo, sft / "export")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_sft_with_lora_under_zero3_resumes_from_its_checkpoint(inputs):
    root, hub = inputs
    run = root / "sft3"
    args = [f"sft.init_from={hub}", f"sft.train_data={root / 'chat.jsonl'}", f"run.dir={run}",
            "deepspeed.zero_stage=3", "trainer.max_steps=4", "trainer.save_every=2", *TINY_SFT]
    launch("train.sft", args, nproc=1)
    first = check_lora_export(run, hub)
    # As if the run had been killed after its step-2 checkpoint: the relaunch resumes there and ends the same.
    for path in ("DONE", "export", "adapter", "checkpoints/step00000004"):
        shutil.rmtree(run / path) if (run / path).is_dir() else (run / path).unlink()
    (run / "checkpoints" / "latest").write_text("step00000002")
    log = launch("train.sft", args, nproc=1)
    assert "at step 2" in log, log[-3000:]
    second = check_lora_export(run, hub)
    assert all(torch.equal(first[k], second[k]) for k in first)
