"""Padded batches reach the model at bucketed widths on CUDA (``sambay_model.length_buckets``), and the padding
changes no result: DPO batches (TRL's collator), held-out scoring and generation prefill (evaluation and on-policy
sampling both go through ``train.evals.generation.generate``).

GPU condition, emulated: the bucket is what ``bucket_length`` / ``pad_multiple`` give for a CUDA device (no GPU
is touched); the model runs on CPU, where the code pads nothing by itself.
"""
import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

import train.alignment.preference_scoring
import train.evals.generation
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
from sambay_model.length_buckets import MIN_PADDED_LENGTH, PAD_MULTIPLE, bucket_length
from tests.train.builders import build_eval_data, build_eval_export


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("buckets")
    data = build_eval_data(root / "data")
    return data, build_eval_export(data, root / "export")


@pytest.fixture
def cuda_buckets(monkeypatch):
    """The CUDA bucket for the train modules' padding, on CPU tensors."""
    for module in (train.evals.generation, train.alignment.preference_scoring):
        monkeypatch.setattr(module, "bucket_length", lambda length, device: bucket_length(length, "cuda"))


def test_dpo_arguments_pad_batches_to_the_bucket_on_cuda(tmp_path):
    from train.dpo import training_args
    from train.alignment.dpo_config import DPORunConfig
    from train.runtime.run_dir import RunDir

    cfg = DPORunConfig()
    cfg.run.dir = str(tmp_path / "run")
    cfg.deepspeed.precision = "fp32"  # HF refuses bf16 arguments on a machine without a GPU
    rd = RunDir(tmp_path / "run")
    assert training_args(cfg, rd, 1, torch.device("cuda", 0), None).pad_to_multiple_of == PAD_MULTIPLE
    assert training_args(cfg, rd, 1, torch.device("cpu"), None).pad_to_multiple_of == 1


def test_dpo_collator_padding_leaves_completion_logps_unchanged():
    """TRL's collator at ``pad_to_multiple_of=128`` (what the DPO arguments set on CUDA) against no padding: the
    summed completion log-probs of every row are the same."""
    config = Phi4FlashConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, sliding_window=8, bos_token_id=0,
                             eos_token_id=1, pad_token_id=2, initializer_range=0.1)
    torch.manual_seed(0)
    model = Phi4FlashForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(3, 64, (n,), generator=g).tolist()  # noqa: E731
    examples = [dict(prompt_ids=rand(9), chosen_ids=rand(14), rejected_ids=rand(5)),
                dict(prompt_ids=rand(4), chosen_ids=rand(30), rejected_ids=rand(21))]

    def completion_logps(multiple):
        batch = DataCollatorForPreference(pad_token_id=2, pad_to_multiple_of=multiple)(examples)
        ids, mask, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        with torch.no_grad():
            logits = model(ids, attention_mask=mask, use_cache=False).logits[:, :-1].double()
        logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return ids.shape[1], (logps * completion[:, 1:]).sum(-1)

    width, padded = completion_logps(PAD_MULTIPLE)
    natural, plain = completion_logps(None)
    assert width == PAD_MULTIPLE and natural == 34  # the padded batch really is wider
    torch.testing.assert_close(padded, plain, rtol=1e-6, atol=1e-6)


def test_heldout_scoring_pads_to_the_bucket_and_scores_the_same(tiny, cuda_buckets, monkeypatch):
    from train.alignment.preference_scoring import completion_logps, load_preference_pairs
    from train.evaluate import load_model

    data, export = tiny
    model, tok = load_model(export)
    pairs = load_preference_pairs(data / "preference" / "heldout.jsonl", limit=3)
    widths = []
    real = train.alignment.preference_scoring._summed_logps
    monkeypatch.setattr(train.alignment.preference_scoring, "_summed_logps",
                        lambda m, ids, labels: widths.append(ids.shape[1]) or real(m, ids, labels))
    padded = completion_logps(model, tok, pairs, max_length=96, batch_size=4)
    monkeypatch.setattr(train.alignment.preference_scoring, "bucket_length", lambda length, device: length)
    plain = completion_logps(model, tok, pairs, max_length=96, batch_size=4)
    assert widths[:2] == [MIN_PADDED_LENGTH] * 2 and max(widths[2:]) < MIN_PADDED_LENGTH, widths
    for a, b in zip(padded, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_generation_pads_prompts_to_the_bucket_and_generates_the_same(tiny, cuda_buckets, monkeypatch):
    from train.evaluate import load_model
    from train.evals.generation import SamplingConfig, chat_prompt, generate

    _, export = tiny
    model, tok = load_model(export)
    prompts = [chat_prompt(tok, q) for q in ["What is 2 + 3?", "Ann has 4 apples and buys 7 more. How many?", "Hi"]]
    cfg = SamplingConfig(max_new_tokens=6, batch_size=2)
    widths = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: widths.append(kw["input_ids"].shape[1]) or real(**kw))
    padded = generate(model, tok, prompts, cfg)
    monkeypatch.setattr(train.evals.generation, "bucket_length", lambda length, device: length)
    plain = generate(model, tok, prompts, cfg)
    assert widths[:2] == [MIN_PADDED_LENGTH] * 2 and max(widths[2:]) < MIN_PADDED_LENGTH, widths
    assert padded == plain
