"""``data.prepare`` with ``tokenizer.kind=path`` pointing at a published-layout hub snapshot (GPT-2 style
vocab.json + merges.txt, the published template without {% generation %} markers): only the tokenizer files are
copied, the SFT masks are derived, the data's fingerprint is the checkpoint's, and a changed source is refused."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hydra import compose, initialize_config_dir

from data.chat_masks import assistant_mask
from data.prepare import prepare
from data.prepare_config import register_prepare_schema
from data.shards import check_compatible, open_split, read_manifest
from data.tokenizer import TokenizerMismatchError, copy_tokenizer_files, fingerprint, load_tokenizer
from tests.data.builders import CONVERSATIONS
from tests.train.hub_snapshot import build_hub_snapshot, write_tokenizer

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "prepare"

# What the snapshot's tokenizer is made of (tests/train/hub_snapshot.py); generation_config.json rides along.
SNAPSHOT_TOKENIZER_FILES = {"vocab.json", "merges.txt", "tokenizer_config.json", "added_tokens.json",
                            "special_tokens_map.json", "generation_config.json"}


def _cfg(overrides):
    """The demo prepare recipe with ``overrides``, composed as the command line would."""
    register_prepare_schema()
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return compose(config_name="demo", overrides=overrides)


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    return build_hub_snapshot(tmp_path_factory.mktemp("hub") / "Phi-4-mini-flash-reasoning")


def _overrides(tmp_path, hub, extra=()):
    corpus, chats = tmp_path / "corpus.txt", tmp_path / "chats.jsonl"
    if not corpus.exists():
        corpus.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(40)))
        chats.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS))
    return [f"out_dir={tmp_path / 'out'}", f"corpus.files=[{corpus}]", "tokenizer.kind=path",
            f"tokenizer.path={hub}", "reasoning.n_train=5", "reasoning.n_heldout=5", "sft.0.n_examples=6",
            "sft.0.val_fraction=0", f"sft.1.jsonl={chats}", "sft.1.val_fraction=0", "preference.enabled=false",
            "num_proc=1", "pretrain.val_fraction=0.2", *extra]


def _documents(shard_dir):
    """(ids, mask) of every document of the ``train`` split, in order."""
    _, shards = open_split(shard_dir, "train")
    for sh in shards:
        ends = np.append(np.asarray(sh.doc_starts)[1:], len(sh.tokens))
        for start, end in zip(sh.doc_starts, ends):
            yield np.asarray(sh.tokens[start:end]), np.asarray(sh.mask[start:end])


def test_prepare_with_the_snapshot_tokenizer(tmp_path, hub_dir):
    out = prepare(_cfg(_overrides(tmp_path, hub_dir)))
    assert {p.name for p in (out / "tokenizer").iterdir()} == SNAPSHOT_TOKENIZER_FILES
    assert not [p for p in out.rglob("*") if p.suffix in (".safetensors", ".py") or p.name == "config.json"]
    hub_fp = fingerprint(hub_dir)
    assert fingerprint(out / "tokenizer") == hub_fp
    vocab = json.loads((hub_dir / "config.json").read_text())["vocab_size"]
    for shard_set in ("pretrain", "sft/basic", "sft/math"):
        assert read_manifest(out / shard_set)["tokenizer"]["fingerprint"] == hub_fp
        check_compatible(out / shard_set, hub_dir, vocab)  # what SFT from the snapshot checks

    tok = load_tokenizer(hub_dir)
    docs = list(_documents(out / "sft" / "math"))
    assert len(docs) == len(CONVERSATIONS)
    for (ids, mask), chat in zip(docs, CONVERSATIONS):
        turns = [i for i, m in enumerate(chat) if m["role"] == "assistant"]
        want_ids, want_mask = assistant_mask(tok, chat, turns, "t")
        assert ids.tolist() == want_ids.tolist() and mask.tolist() == want_mask.tolist()
        # Independently of the derivation: exactly the assistant contents and their <|end|> are trained.
        assert tok.decode(ids[mask == 1].tolist()) == "".join(chat[i]["content"] + "<|end|>" for i in turns)
    for ids, mask in _documents(out / "sft" / "basic"):  # generated problems: one assistant turn each
        assert tok.decode(ids[mask == 1].tolist()).endswith("<|end|>") and mask[-1] == 0


def test_a_changed_tokenizer_path_is_refused_until_overwrite(tmp_path, hub_dir):
    other = tmp_path / "other_tokenizer"
    other.mkdir()
    write_tokenizer(other, bpe_vocab=280)
    assert fingerprint(other) != fingerprint(hub_dir)
    out = prepare(_cfg(_overrides(tmp_path, hub_dir, ["pretrain.enabled=false"])))
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    changed = _overrides(tmp_path, other, ["pretrain.enabled=false"])
    message = rf"tokenizer\.path={other} holds tokenizer .*{out / 'tokenizer'} was copied from another.*overwrite=true"
    for extra in ([], ["dry_run=true"]):  # a complete directory, and its plan
        with pytest.raises(TokenizerMismatchError, match=message):
            prepare(_cfg([*changed, *extra]))
    (out / "DONE").unlink()
    (out / "reasoning" / "heldout.jsonl").unlink()
    with pytest.raises(TokenizerMismatchError, match=message):  # an incomplete one, before anything is built
        prepare(_cfg(changed))
    assert not (out / "reasoning" / "heldout.jsonl").exists()
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items() if p.exists())
    prepare(_cfg([*changed, "overwrite=true"]))
    assert fingerprint(out / "tokenizer") == fingerprint(other)
    assert json.loads((out / "DONE").read_text())["tokenizer_fingerprint"] == fingerprint(other)


def test_copy_takes_only_tokenizer_files(tmp_path, hub_dir):
    dest = tmp_path / "copy"
    dest.mkdir()
    names = copy_tokenizer_files(hub_dir, dest)
    assert set(names) == SNAPSHOT_TOKENIZER_FILES == {p.name for p in dest.iterdir()}
    assert fingerprint(dest) == fingerprint(hub_dir)
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    shutil.copy(hub_dir / "config.json", weights_only)
    with pytest.raises(FileNotFoundError, match=rf"{weights_only}: not a tokenizer directory"):
        copy_tokenizer_files(weights_only, dest)


def test_a_snapshot_without_tokenizer_json_is_a_tokenizer_path(tmp_path, hub_dir, capsys):
    plan = _cfg([*_overrides(tmp_path, hub_dir), "dry_run=true"])
    prepare(plan)
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["dry_run"]["inputs"]["tokenizer"] == str(hub_dir)
    with pytest.raises(ValueError, match=rf"tokenizer\.path='{tmp_path}': not a tokenizer directory"):
        prepare(_cfg([*_overrides(tmp_path, tmp_path), "dry_run=true"]))
