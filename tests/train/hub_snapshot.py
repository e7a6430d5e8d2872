"""A tiny random SambaY model in exactly the layout of the published microsoft/Phi-4-mini-flash-reasoning snapshot
(/work/shared/reference/hub_snapshot.md): what a fine-tuning user points ``sft.init_from`` at.

Scaled down, same shape of files: ``config.json`` with the official keys and value types (``sliding_window`` an int,
``auto_map``, ``_attn_implementation``, ``torch_dtype`` "bfloat16", ``use_cache`` true), bf16 weights with the
official tensor names (no ``lm_head.weight``: tied) in ``shards`` files plus ``model.safetensors.index.json`` (one
``model.safetensors`` when ``shards=1``), a GPT-2 style byte-level BPE as ``vocab.json`` + ``merges.txt`` with the
published added tokens (text forms as published, ids right after the BPE's) in ``added_tokens.json``,
``special_tokens_map.json`` and ``tokenizer_config.json`` (``GPT2Tokenizer``, the published chat template verbatim, no
``{% generation %}`` markers), no ``tokenizer.json``, and ``generation_config.json``. The remote-code files
(``configuration_phi4flash.py``, ``modeling_phi4flash.py``) are not written: ``import sambay_model`` replaces them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# The published chat template, verbatim (tokenizer_config.json of the snapshot).
PUBLISHED_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] "
    "is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + "
    "'<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
# The published added tokens in id order (199999, 200018..200028), with their published "special" and "rstrip".
PUBLISHED_ADDED_TOKENS = [
    ("<|endoftext|>", True, False), ("<|endofprompt|>", True, False), ("<|assistant|>", True, True),
    ("<|end|>", True, True), ("<|user|>", True, True), ("<|system|>", True, True), ("<|tool|>", False, True),
    ("<|/tool|>", False, True), ("<|tool_call|>", False, True), ("<|/tool_call|>", False, True),
    ("<|tool_response|>", False, True), ("<|tag|>", True, True),
]
END_OF_TEXT = "<|endoftext|>"
END_OF_TURN = "<|end|>"
# Text the tiny BPE learns its merges from.
_CORPUS = [f"the quick brown fox {i} jumps over the lazy dog; what is {i} plus {i + 3}? The answer is {2 * i + 3}."
           for i in range(60)]


def _train_bpe(bpe_vocab: int) -> Tokenizer:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=bpe_vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_CORPUS, trainer=trainer)
    return tk


def write_tokenizer(root: Path, bpe_vocab: int = 300) -> dict[str, int]:
    """The GPT-2 style tokenizer files of the snapshot in ``root``; returns the added tokens' ids."""
    tk = _train_bpe(bpe_vocab)
    tk.model.save(str(root))  # vocab.json + merges.txt
    base = tk.get_vocab_size()
    ids = {text: base + i for i, (text, _, _) in enumerate(PUBLISHED_ADDED_TOKENS)}
    decoder = {str(ids[text]): {"content": text, "lstrip": False, "normalized": False, "rstrip": rstrip,
                                "single_word": False, "special": special}
               for text, special, rstrip in PUBLISHED_ADDED_TOKENS}
    config = {"add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
              "added_tokens_decoder": decoder, "bos_token": END_OF_TEXT, "chat_template": PUBLISHED_CHAT_TEMPLATE,
              "clean_up_tokenization_spaces": False, "eos_token": END_OF_TEXT, "model_max_length": 65536,
              "pad_token": END_OF_TEXT, "tokenizer_class": "GPT2Tokenizer", "unk_token": END_OF_TEXT}
    special = {"content": END_OF_TEXT, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    _write_json(root / "tokenizer_config.json", config)
    _write_json(root / "added_tokens.json", ids)
    _write_json(root / "special_tokens_map.json", {k: special for k in ("bos_token", "eos_token", "pad_token",
                                                                         "unk_token")})
    return ids


def hub_config(*, vocab_size: int, eot_id: int, hidden_size: int, num_hidden_layers: int, sliding_window: int) -> dict:
    """config.json of the snapshot: the published keys, order and value types, architecture scaled down."""
    return {
        "architectures": ["Phi4FlashForCausalLM"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_phi4flash.Phi4FlashConfig",
                     "AutoModelForCausalLM": "modeling_phi4flash.Phi4FlashForCausalLM",
                     "AutoTokenizer": "Xenova/gpt-4o"},
        "pad_token_id": eot_id, "bos_token_id": eot_id, "embd_pdrop": 0.0, "eos_token_id": eot_id,
        "hidden_act": "silu", "hidden_size": hidden_size, "initializer_range": 0.02,
        "intermediate_size": 2 * hidden_size, "layer_norm_eps": 1e-5, "max_position_embeddings": 262144,
        "_attn_implementation": "flash_attention_2", "mb_per_layer": 2, "model_type": "phi4flash",
        "num_attention_heads": 4, "num_hidden_layers": num_hidden_layers, "num_key_value_heads": 2,
        "resid_pdrop": 0.0, "sliding_window": sliding_window, "torch_dtype": "bfloat16", "tie_word_embeddings": True,
        "transformers_version": "4.46.1", "use_cache": True, "mlp_bias": False, "lm_head_bias": False,
        "vocab_size": vocab_size,
    }


def random_bf16_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Randomly initialised weights under the official tensor names, every tensor bf16 (as published), tied
    ``lm_head.weight`` left out (as published)."""
    from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM

    torch.manual_seed(seed)
    model = Phi4FlashForCausalLM(Phi4FlashConfig(**config))
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
            if k != "lm_head.weight"}


def write_weights(root: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    """``model.safetensors`` (one shard) or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``,
    names split in sorted order into ``shards`` groups of about equal bytes."""
    if shards == 1:
        save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(tensors)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    groups: list[list[str]] = [[] for _ in range(shards)]
    seen = 0
    for name in names:
        groups[min(shards - 1, seen * shards // total)].append(name)
        seen += tensors[name].numel() * tensors[name].element_size()
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(root / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in group})
    _write_json(root / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def build_hub_snapshot(root: str | Path, *, shards: int = 2, vocab_size: int | None = None, hidden_size: int = 32,
                       num_hidden_layers: int = 4, sliding_window: int = 8, seed: int = 0) -> Path:
    """Write the snapshot into ``root`` (created) and return it. ``vocab_size`` defaults to the tokenizer's size
    rounded up to a multiple of 64 (the published 200,064 is likewise padded above its last token)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(root)
    n_tok = max(ids.values()) + 1
    vocab_size = vocab_size if vocab_size is not None else -(-n_tok // 64) * 64
    if vocab_size < n_tok:
        raise ValueError(f"build_hub_snapshot: vocab_size={vocab_size} is below the tokenizer's {n_tok} ids")
    eot, eot_turn = ids[END_OF_TEXT], ids[END_OF_TURN]
    config = hub_config(vocab_size=vocab_size, eot_id=eot, hidden_size=hidden_size,
                        num_hidden_layers=num_hidden_layers, sliding_window=sliding_window)
    _write_json(root / "config.json", config)
    write_weights(root, random_bf16_weights(config, seed), shards)
    _write_json(root / "generation_config.json", {"_from_model_config": True, "bos_token_id": eot,
                                                  "eos_token_id": [eot_turn, eot], "pad_token_id": eot,
                                                  "transformers_version": "4.45.0"})
    return root


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
