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
