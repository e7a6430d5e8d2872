"""TRL's DPO trainer drives the model through its fused LM head (base_model + get_output_embeddings), reloads the
reference model from the saved directory, and turns gradient checkpointing on by default."""
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import sambay_model  # noqa: F401
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    corpus = ["the quick brown fox jumps over the lazy dog", "what is two plus two? it is four."] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|pad|>", "<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>")


def test_dpo_trains_from_a_saved_model(tmp_path):
    from trl import DPOConfig, DPOTrainer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = tiny_tokenizer()
        cfg = Phi4FlashConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=8,
                              num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                              bos_token_id=tok.eos_token_id, compute_backend="torch")
        torch.manual_seed(0)
        Phi4FlashForCausalLM(cfg).save_pretrained(tmp_path / "init")
        tok.save_pretrained(tmp_path / "init")
        model = Phi4FlashForCausalLM.from_pretrained(tmp_path / "init")
        data = Dataset.from_list([{"prompt": "what is two plus two?", "chosen": " it is four.",
                                   "rejected": " the lazy dog"}] * 8)
        args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=3, use_cpu=True,
                         bf16=False, logging_steps=1, report_to=[], learning_rate=1e-3, save_strategy="no")
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        trainer.train()
    finally:
        torch.set_num_threads(before)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3
    assert abs(losses[0] - 0.6931) < 1e-3  # policy == reference at step 0
    assert losses[-1] < losses[0]


def _tiny_mup_model_and_ids():
    """A small muP model (logits multiplier 3.5) and two 14-token rows."""
    cfg = Phi4FlashConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, sliding_window=8, bos_token_id=0,
                          eos_token_id=1, compute_backend="torch", logits_multiplier=3.5)
    torch.manual_seed(0)
    model = Phi4FlashForCausalLM(cfg).eval()
    return model, torch.randint(3, 300, (2, 14), generator=torch.Generator().manual_seed(2))


def test_trl_fused_head_scores_a_mup_model_like_the_model_itself():
    # DPOTrainer (trl 1.16) scores completions through add_fused_lm_head, which reads the logits multiplier from
    # the config as `lm_head_multiplier` (or logit_scale / logits_scaling); ours is `logits_multiplier`.
    from trl.trainer.utils import add_fused_lm_head

    model, ids = _tiny_mup_model_and_ids()
    labels = ids.clone()
    labels[:, :6] = -100  # the prompt; the completion is the rest
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
        own = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        own = (own * (labels[:, 1:] != -100)).sum(-1)
        own_loss = model(ids, labels=labels, use_cache=False).loss
        add_fused_lm_head(model)
        fused = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
    torch.testing.assert_close(fused.log_probs.double().sum(-1), own, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fused.loss, own_loss, rtol=1e-5, atol=1e-5)
    # Generation and plain calls still reach the model's own forward.
    with torch.no_grad():
        torch.testing.assert_close(model(ids, use_cache=False).logits, logits)


def test_fp32_trl_head_keeps_dpo_log_probs_fp32_under_autocast():
    from trl.trainer.utils import add_fused_lm_head

    from sambay_model.lm_head_loss import precision_trl_head, shifted_token_logprobs

    model, ids = _tiny_mup_model_and_ids()
    labels = ids.masked_fill(torch.arange(14) < 6, -100)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # as DPOTrainer does
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
        before = model(**kwargs).log_probs
    # The reference: the same (autocast) backbone output through an fp32 head.
    exact, _ = shifted_token_logprobs(hidden, model.lm_head.weight.detach(), labels, model.config.logits_multiplier)
    assert (before - exact).abs().max() > 1e-3  # TRL's head as DPOTrainer adds it runs in bf16 under autocast
    precision_trl_head(model)  # on CPU the head runs in fp32 whatever lm_head_precision says
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(**kwargs).log_probs
    torch.testing.assert_close(after, exact, rtol=1e-5, atol=1e-5)
    assert model(ids, use_cache=False).logits.shape == (2, 14, 300)  # plain calls still reach the model
