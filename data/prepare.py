"""Build every dataset a pipeline needs, in one idempotent command.

    python -m data.prepare [--config-name demo] [overrides, e.g. out_dir=artifacts/data/x overwrite=true]

Writes under ``out_dir`` (docs/design.md): ``tokenizer/``, ``pretrain/`` (plus one shard set per
``extra_pretrain`` entry, for mixtures), ``reasoning/{train,heldout}.jsonl``, ``sft/<stage>.jsonl`` + ``sft/<stage>/``,
``preference/{train,heldout}.jsonl`` and finally ``DONE``. Each output is
written atomically, so an existing one is complete: it is skipped unless ``overwrite=true``.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import hydra
from omegaconf import DictConfig, OmegaConf

from data.atomic import atomic_dir, atomic_write_text
from data.prepare_config import PrepareConfig, register_configs

log = logging.getLogger("data.prepare")


def _step(path: Path, cfg: PrepareConfig, what: str, build: Callable[[], object]) -> None:
    """Run ``build`` unless ``path`` exists (outputs are atomic, so existing means complete)."""
    if path.exists() and not cfg.overwrite:
        log.info("%s: %s exists, skipping (overwrite=true redoes it)", what, path)
        return
    t0 = time.perf_counter()
    build()
    log.info("%s: wrote %s in %.1f s", what, path, time.perf_counter() - t0)


RESERVED_NAMES = ("tokenizer", "pretrain", "reasoning", "sft", "preference")


class _Corpus:
    """Pretraining text. ``corpus.files`` are streamed from disk on every use (any size); the Debian/stdlib
    corpus (a fixed ~10-100 MB) is collected at most once, and only when a step needs the text."""

    def __init__(self, corpus_cfg):
        self.corpus_cfg, self._docs = corpus_cfg, None
        self.files = [str(f) for f in corpus_cfg.files]
        if self.files:
            from data.documents import check_inputs

            check_inputs(self.files)  # a typo in a path fails now, not after the tokenizer is trained

    @property
    def sources(self) -> list[str]:
        if self.files:
            return self.files
        return sorted({d.source.split(":")[0] for d in self._collected()})

    def _collected(self):
        if self._docs is None:
            from data.corpus import collect_corpus

            c = self.corpus_cfg
            self._docs = collect_corpus(c.debian_packages, c.include_stdlib, c.cache_dir, c.max_chars)
            log.info("corpus: %d documents, %.1f M characters", len(self._docs), sum(len(d.text) for d in self._docs) / 1e6)
        return self._docs

    def texts(self, skip: int = 0) -> Iterator[str]:
        """The documents' texts in order, after the first ``skip``."""
        if self.files:
            from data.documents import iter_documents

            return iter_documents(self.files, self.corpus_cfg.text_field, skip)
        return (d.text for d in self._collected()[skip:])

    def input_id(self) -> str | None:
        """What a resumed preparation must match; None (collected corpus: small, redone from zero)."""
        if not self.files:
            return None
        from data.documents import input_fingerprint

        return input_fingerprint(self.files, self.corpus_cfg.text_field)


def build_tokenizer(cfg: PrepareConfig, out: Path, corpus: _Corpus) -> None:
    from data.tokenizer import build_phi4mini_tokenizer, train_bpe_tokenizer

    t = cfg.tokenizer
    if t.kind == "bpe":
        train_bpe_tokenizer(_first_chars(corpus.texts(), t.train_chars), t.vocab_size, out, overwrite=cfg.overwrite)
    elif t.kind == "phi4mini":
        build_phi4mini_tokenizer(out, overwrite=cfg.overwrite)
    elif t.kind == "path":
        if not t.path or not Path(t.path, "tokenizer.json").is_file():
            raise ValueError(f"tokenizer.path={t.path!r}: not a tokenizer directory with tokenizer.json")
        with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
            shutil.copytree(t.path, tmp, dirs_exist_ok=True)
            if not (tmp / "generation_config.json").exists():
                from transformers import GenerationConfig

                from data.tokenizer import load_tokenizer, stop_token_ids

                tok = load_tokenizer(tmp)
                GenerationConfig(eos_token_id=stop_token_ids(tok) or [tok.eos_token_id],
                                 pad_token_id=tok.pad_token_id).save_pretrained(tmp)
    else:
        raise ValueError(f"tokenizer.kind={t.kind!r}: expected one of bpe, phi4mini, path")


def _first_chars(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Texts until ``max_chars`` characters have been passed on (0 = all), streamed."""
    total = 0
    for text in texts:
        if max_chars and total >= max_chars:
            return
        yield text
        total += len(text)


def reasoning_records(cfg: PrepareConfig, n: int, split: str, seed: int, families=None, with_values: bool = False):
    from data import reasoning

    r = cfg.reasoning
    if r.source == "procedural":
        fams = list(families or r.families) or None
        gen = reasoning.generate_problems_with_values if with_values else reasoning.generate_problems
        return gen(n, split, seed, fams)
    if r.source == "gsm_symbolic":
        return reasoning.generate_gsm_symbolic(n, split, seed, r.heldout_fraction)
    raise ValueError(f"reasoning.source={r.source!r}: expected procedural or gsm_symbolic")


def prepare(cfg: PrepareConfig) -> Path:
    """Build all outputs of ``cfg`` (see module docstring); returns ``out_dir``."""
    from data.jsonl import write_jsonl
    from data.preference import pairs_from_corruptions
    from data.pretrain_shards import write_pretrain_shards
    from data.sft_shards import read_chat_jsonl, reasoning_to_chat, write_sft_shards
    from data.shards import check_compatible

    out = Path(cfg.out_dir)
    done = out / "DONE"
    if done.exists() and not cfg.overwrite:
        log.info("%s is complete (DONE exists); nothing to do (overwrite=true redoes everything)", out)
        return out
    if done.exists():  # overwrite=true: the set is incomplete until this run writes DONE again
        done.unlink()
    names = [s.name for s in cfg.sft]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"sft stages need unique non-empty names, got {names}")
    extra_names = [e.name for e in cfg.extra_pretrain]
    if any(not n or n in RESERVED_NAMES for n in extra_names) or len(set(extra_names)) != len(extra_names):
        raise ValueError(f"extra_pretrain names must be unique, non-empty and not in {RESERVED_NAMES}: {extra_names}")
    corpus = _Corpus(cfg.corpus)
    tok_dir = out / "tokenizer"
    _step(tok_dir, cfg, "tokenizer", lambda: build_tokenizer(cfg, tok_dir, corpus))

    def _reuse_check(path: Path) -> None:
        if path.exists() and not cfg.overwrite:  # a kept shard set must match the (possibly rebuilt) tokenizer
            check_compatible(path, tok_dir, None)

    sets = [("pretrain", corpus, cfg.pretrain.val_fraction)] if cfg.pretrain.enabled else []
    sets += [(e.name, _Corpus(e.corpus), e.val_fraction) for e in cfg.extra_pretrain]
    for name, source, val_fraction in sets:
        pre = out / name
        _reuse_check(pre)

        def _pretrain(pre=pre, source=source, val_fraction=val_fraction):
            write_pretrain_shards(source.texts, tok_dir, pre, source.sources, val_fraction, cfg.seed, cfg.num_proc,
                                  cfg.pretrain.shard_tokens, cfg.overwrite, input_id=source.input_id())

        _step(pre, cfg, f"{name} shards", _pretrain)

    r = cfg.reasoning
    for split, n in (("train", r.n_train), ("heldout", r.n_heldout)):
        path = out / "reasoning" / f"{split}.jsonl"
        _step(path, cfg, f"reasoning {split}",
              lambda split=split, n=n, path=path: write_jsonl(path, reasoning_records(cfg, n, split, cfg.seed), cfg.overwrite))

    for k, stage in enumerate(cfg.sft):
        jsonl, shard_dir = out / "sft" / f"{stage.name}.jsonl", out / "sft" / stage.name

        def _chat(stage=stage, k=k, jsonl=jsonl):
            if stage.jsonl:
                records = [{"messages": m} for m in read_chat_jsonl(stage.jsonl)]
            else:
                # Seeds differ from reasoning/train.jsonl's so stages see other problems of the same templates.
                records = [reasoning_to_chat(p) for p in reasoning_records(cfg, stage.n_examples, "train",
                                                                           cfg.seed + 1 + k, stage.families)]
            write_jsonl(jsonl, records, cfg.overwrite)

        _step(jsonl, cfg, f"sft {stage.name} jsonl", _chat)
        _reuse_check(shard_dir)
        _step(shard_dir, cfg, f"sft {stage.name} shards",
              lambda stage=stage, jsonl=jsonl, shard_dir=shard_dir: write_sft_shards(
                  read_chat_jsonl(jsonl), tok_dir, shard_dir, [str(stage.jsonl or jsonl)], stage.val_fraction,
                  cfg.seed, overwrite=cfg.overwrite))

    p = cfg.preference
    if p.enabled:
        for split, n, seed in (("train", p.n_train, cfg.seed + 100), ("heldout", p.n_heldout, cfg.seed + 200)):
            path = out / "preference" / f"{split}.jsonl"
            _step(path, cfg, f"preference {split}", lambda split=split, n=n, seed=seed, path=path: write_jsonl(
                path, pairs_from_corruptions(reasoning_records(cfg, n, split, seed, with_values=True), seed), cfg.overwrite))

    summary = {"config": OmegaConf.to_container(OmegaConf.structured(cfg)) if not isinstance(cfg, DictConfig)
               else OmegaConf.to_container(cfg, resolve=True)}
    from data.tokenizer import fingerprint

    summary["tokenizer_fingerprint"] = fingerprint(tok_dir)
    atomic_write_text(done, json.dumps(summary, indent=2) + "\n", overwrite=True)
    log.info("done: %s", out)
    return out


@hydra.main(version_base=None, config_path="../recipes/prepare", config_name="demo")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", force=True)
    prepare(cfg)


if __name__ == "__main__":
    register_configs()  # the recipes' defaults name the schema, so it must exist before Hydra composes
    main()
