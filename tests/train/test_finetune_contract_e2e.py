"""The README's "Fine-tune Phi-4-mini-flash-reasoning on your data" end to end (issue 21 item 8, slow).

The three commands are read out of README.md (not retyped), their placeholders filled in (``N``, ``HUB_DIR``,
``DATA``, ``PREFS``, ``OUT_SFT``, ``OUT_DPO``, the prompt), and only small-size overrides appended. They run against
a tiny snapshot in the published layout (tests/train/hub_snapshot.py: sharded bf16, GPT-2 style tokenizer, the
published template without generation markers): SFT on a TRL ``messages`` JSONL (and again with LoRA), DPO from
the SFT export on a standard-format (strings) file and on an implicit-prompt conversational file, and generation
from the DPO export. Every export must be a hub snapshot again."""
import json
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import sambay_model  # noqa: F401  (registers phi4flash with the Auto classes)
from tests.train.builders import REPO, env, free_port, greedy_continuation
from tests.train.hub_snapshot import END_OF_TEXT, END_OF_TURN, build_hub_snapshot
from train.config import SFTConfig

pytestmark = pytest.mark.slow

SECTION = "## Fine-tune Phi-4-mini-flash-reasoning on your data"
PLACEHOLDERS = ("HUB_DIR", "DATA", "PREFS", "OUT_SFT", "OUT_DPO", "N")
DOCUMENTED_PROMPT = "..."
PROMPT = "what is 4 plus 3?"
COMPANION_FILES = ("tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "special_tokens_map.json", "generation_config.json")
# Small sizes for 2 shared CPU cores. The LRs are raised from the recipes' (1e-5, 5e-7) so that 3 steps move the
# weights by more than bf16's resolution (an export equal to its input would not show that training reached it);
# DPO's stays low enough that the policy still answers in words (at 1e-3 its greedy reply is only special tokens,
# which decode to nothing, and the generate check would compare two empty strings).
# The tiny model's weights (~100 KB) are split like the published 7.7 GB are at the 5GB default.
SHARD = ["trainer.export_max_shard_size=40KB"]
SHARD_BYTES = 40_000
SFT_SMALL = ["sft.seq_len=64", "data.global_batch_tokens=128", "sft.lr=1.0e-3", "trainer.max_steps=3",
             "trainer.eval_every=3", "trainer.eval_batches=1", "trainer.log_every=1", "trainer.progress_bar=false",
             *SHARD]
# dpo.max_length holds every whole pair of the tiny files below (their answers differ at the end).
DPO_SMALL = ["trainer.max_steps=3", "trainer.save_every=0", "trainer.log_every=1", "trainer.progress_bar=false",
             "dpo.max_length=64", "dpo.per_device_batch_size=2", "dpo.gradient_accumulation_steps=1",
             "dpo.gradient_checkpointing=false", "dpo.lr=1.0e-4", "dpo.warmup_steps=0", "dpo.heldout_batch_size=4",
             *SHARD]
MAX_NEW_TOKENS = 6


# The commands, as the README documents them.
def readme_commands() -> dict[str, list[str]]:
    """The argv of each command in the section's first ``bash`` block, keyed by its ``-m`` module."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    block = re.search(r"```bash\n(.*?)```", text.split(SECTION, 1)[1], re.S)
    assert block, f"README.md: no ```bash block under {SECTION!r}"
    commands = [shlex.split(line, comments=True) for line in block[1].splitlines() if line.strip()]
    by_module = {argv[argv.index("-m") + 1]: argv for argv in commands if "-m" in argv}
    assert set(by_module) == {"train.sft", "train.dpo", "train.generate"}, f"README.md commands: {commands}"
    return by_module


def fill(argv: list[str], values: dict[str, str]) -> list[str]:
    """``argv`` with the placeholders in its ``key=value`` values replaced, every placeholder of ``values`` used."""
    pattern = re.compile(r"\b(%s)\b" % "|".join(PLACEHOLDERS))
    used: set[str] = set()

    def value(match: re.Match) -> str:
        assert match[1] in values, f"README command {shlex.join(argv)}: no value given for {match[1]}"
        used.add(match[1])
        return values[match[1]]

    out = []
    for arg in argv:
        key, eq, val = arg.partition("=")
        if eq and val == DOCUMENTED_PROMPT:
            used.add(DOCUMENTED_PROMPT)
            val = values[DOCUMENTED_PROMPT]
        out.append(key + eq + pattern.sub(value, val) if eq else arg)
    assert used == set(values), f"README command {shlex.join(argv)}: placeholders {sorted(set(values) - used)} unused"
    return out


def launch(module: str, values: dict[str, str], overrides: list[str]) -> str:
    """Run the README's command for ``module`` (torchrun and python as this interpreter); returns stdout."""
    argv = fill(readme_commands()[module], values) + overrides
    launcher = {"torchrun": [sys.executable, "-m", "torch.distributed.run", f"--master_port={free_port()}"],
                "python": [sys.executable]}
    assert argv[0] in launcher, f"README command {shlex.join(argv)}: unexpected launcher"
    p = subprocess.run(launcher[argv[0]] + argv[1:], cwd=REPO, env=env(), capture_output=True, text=True,
                       timeout=900, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"{shlex.join(argv)}\nexit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p.stdout


# The inputs: a snapshot, chat data, preference files in two TRL formats.
def chat_records(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"what is {i} plus 3?"},
                          {"role": "assistant", "content": f"The answer is {i + 3}."}]} for i in range(n)]


def standard_pairs(n: int) -> list[dict]:
    return [{"prompt": f"what is {i} plus {i}?", "chosen": f" The answer is {2 * i}.",
             "rejected": f" The answer is {2 * i + 1}."} for i in range(n)]


def implicit_conversational_pairs(n: int) -> list[dict]:
    def conversation(i, answer):
        return [{"role": "user", "content": f"what is {i} plus 2?"}, {"role": "assistant", "content": answer}]

    return [{"chosen": conversation(i, f"The answer is {i + 2}."), "rejected": conversation(i, f"It is {i + 5}.")}
            for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contract")
    return {"root": root, "hub": build_hub_snapshot(root / "hub"),
            "chats": write_jsonl(root / "chats.jsonl", chat_records(24)),
            "standard": write_jsonl(root / "standard.jsonl", standard_pairs(20)),
            "implicit": write_jsonl(root / "implicit.jsonl", implicit_conversational_pairs(20))}


def sft(inputs, out: Path, extra=()) -> Path:
    launch("train.sft", {"N": "1", "HUB_DIR": str(inputs["hub"]), "DATA": str(inputs["chats"]),
                         "OUT_SFT": str(out)}, [*SFT_SMALL, *extra])
    return out


def dpo(inputs, out_sft: Path, prefs: str, out: Path) -> Path:
    launch("train.dpo", {"N": "1", "OUT_SFT": str(out_sft), "PREFS": str(inputs[prefs]), "OUT_DPO": str(out)},
           DPO_SMALL)
    return out


@pytest.fixture(scope="module")
def sft_run(inputs) -> Path:
    """OUT_SFT of the README's SFT command (shared by the DPO tests)."""
    return sft(inputs, inputs["root"] / "sft")


@pytest.fixture(scope="module")
def dpo_standard_run(inputs, sft_run) -> Path:
    """OUT_DPO of the README's DPO command on the standard-format file."""
    return dpo(inputs, sft_run, "standard", inputs["root"] / "dpo_standard")


# The export checks.
def stored_tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def check_weight_files(export: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Weights above ``trainer.export_max_shard_size`` come out as ``model-0000i-of-0000n.safetensors`` files
    with ``model.safetensors.index.json`` mapping every tensor, each file within the limit (a single tensor
    larger than the limit aside), as the published snapshot's two files are."""
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert total > 2 * SHARD_BYTES
    files = sorted(p.name for p in export.glob("*.safetensors"))
    assert len(files) >= 2 and all(f.startswith("model-0000") for f in files), files
    index = json.loads((export / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors) and set(index["weight_map"].values()) == set(files)
    for f in files:
        sizes = [t.numel() * t.element_size() for t in load_file(str(export / f)).values()]
        assert sum(sizes) <= SHARD_BYTES or len(sizes) == 1, (f, sum(sizes))


def check_hub_export(export: Path, hub: Path, moved_from: Path) -> dict[str, torch.Tensor]:
    """``export`` is a hub snapshot of ``hub``'s layout whose weights differ from ``moved_from``'s; its tensors."""
    assert json.loads((export / "config.json").read_text()) == json.loads((hub / "config.json").read_text())
    for name in COMPANION_FILES:
        assert (export / name).read_bytes() == (hub / name).read_bytes(), f"{export}: {name} differs from {hub}'s"
    assert not (export / "tokenizer.json").exists()  # as published
    written, published = stored_tensors(export), stored_tensors(hub)
    assert {k: (t.dtype, t.shape) for k, t in written.items()} == {k: (t.dtype, t.shape) for k, t in published.items()}
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    check_weight_files(export, written)
    before = stored_tensors(moved_from)
    assert not all(torch.equal(written[k], before[k]) for k in written), f"{export}: the weights of {moved_from}"
    model = AutoModelForCausalLM.from_pretrained(str(export))
    assert type(model).__name__ == "Phi4FlashForCausalLM" and model.config.use_cache
    return written


def hand_greedy(export: Path, user_text: str, max_new: int) -> str:
    """Greedy decoding written out with the Auto classes: a full forward per token, argmax, the stop ids of the
    export's generation config plus ``<|end|>`` and ``<|endoftext|>``."""
    model = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(export))
    stops = {*json.loads((export / "generation_config.json").read_text())["eos_token_id"],
             *tok.convert_tokens_to_ids([END_OF_TURN, END_OF_TEXT])}
    prompt = tok.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    return tok.decode(greedy_continuation(model, ids, stops, max_new), skip_special_tokens=True)


# The tests.
def test_sft_from_the_hub_snapshot_exports_a_hub_snapshot(inputs, sft_run):
    assert (sft_run / "DONE").is_file()
    steps = [json.loads(line)["step"] for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3
    check_hub_export(sft_run / "export", inputs["hub"], moved_from=inputs["hub"])
    # The checkpoint is read in place: the weights' only copies are the run's own (checkpoints, export).
    assert not list((sft_run / "data").rglob("*.safetensors"))


def test_dpo_on_a_standard_format_file(inputs, sft_run, dpo_standard_run):
    assert (dpo_standard_run / "DONE").is_file()
    held = json.loads((dpo_standard_run / "dpo_heldout.json").read_text())
    assert held["train_pairs"] + held["heldout_pairs"] == 20 and held["steps"] == 3
    check_hub_export(dpo_standard_run / "export", inputs["hub"], moved_from=sft_run / "export")


def test_dpo_on_an_implicit_prompt_conversational_file(inputs, sft_run):
    out = dpo(inputs, sft_run, "implicit", inputs["root"] / "dpo_implicit")
    held = json.loads((out / "dpo_heldout.json").read_text())
    assert held["train_pairs"] + held["heldout_pairs"] == 20 and held["steps"] == 3
    check_hub_export(out / "export", inputs["hub"], moved_from=sft_run / "export")


def test_generate_from_the_dpo_export(dpo_standard_run):
    export = dpo_standard_run / "export"
    stdout = launch("train.generate", {"OUT_DPO": str(dpo_standard_run), DOCUMENTED_PROMPT: PROMPT},
                    [f"max_new_tokens={MAX_NEW_TOKENS}"])
    expected = hand_greedy(export, PROMPT, MAX_NEW_TOKENS)
    assert expected.strip(), "the DPO export's greedy reply is empty: the comparison would show nothing"
    assert stdout == expected + "\n"


def test_sft_with_lora_exports_a_merged_hub_snapshot(inputs):
    # LoRA (issue 21 item 3) is the schema's `peft` section; until it lands this test fails here, by design.
    assert "peft" in {f.name for f in fields(SFTConfig)}, "train.config.SFTConfig has no `peft` section (LoRA)"
    out = sft(inputs, inputs["root"] / "sft_lora", ["peft.enabled=true"])
    written = check_hub_export(out / "export", inputs["hub"], moved_from=inputs["hub"])
    # Merged: the published names only (check_hub_export), moved by the adapters; the frozen base's tensors that no
    # adapter touches (the tied embedding, norms, biases, D) are the input's exactly.
    published = stored_tensors(inputs["hub"])
    frozen = [k for k, t in published.items() if k == "model.embed_tokens.weight" or t.dim() == 1]
    assert frozen and all(torch.equal(written[k], published[k]) for k in frozen)
    assert (out / "adapter" / "adapter_config.json").is_file(), f"{out}: no adapter/ beside the merged export"
