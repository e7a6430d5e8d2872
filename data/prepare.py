"""Build every dataset a pipeline needs, in one idempotent command.

    python -m data.prepare [--config-name demo] [overrides, e.g. out_dir=artifacts/data/x overwrite=true]
    python -m data.prepare --config-name demo dry_run=true    # check everything, print the plan, write nothing

Writes under ``out_dir`` (the layout is ``data.layout.PreparedData``; docs/design.md): ``tokenizer/``,
``pretrain/`` (plus one shard set per ``extra_pretrain`` entry, for mixtures), ``reasoning/{train,heldout}.jsonl``,
``sft/<stage>.jsonl`` + ``sft/<stage>/``, ``preference/{train,heldout}.jsonl`` and finally ``DONE``. Each output
is written atomically, so an existing one is complete: it is kept unless ``overwrite=true``. While it writes, the
command holds ``prepare.lock`` in ``out_dir``: a second prepare into the same directory is refused, naming the
holder (exit status 4).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from omegaconf import DictConfig, OmegaConf

from data import reasoning
from data.atomic import atomic_dir, atomic_write_text
from data.corpus import Document, check_debian_packages, collect_corpus
from data.dir_lock import RunDirLockedError, RunLock
from data.documents import check_inputs, check_readable, input_fingerprint, iter_documents
from data.jsonl import write_jsonl
from data.layout import RESERVED_NAMES, PreparedData
from data.preference import pairs_from_corruptions
from data.prepare_config import PrepareConfig, register_prepare_schema
from data.pretrain_shards import write_pretrain_shards
from data.sft_shards import read_chat_jsonl, reasoning_to_chat, write_sft_shards
from data.shards import check_compatible
from data.tokenizer import (TOKENIZER_DEFINING_FILES, TOKENIZER_FILES, TokenizerMismatchError,
                            build_phi4mini_tokenizer, copy_tokenizer_files, fingerprint, is_tokenizer_dir,
                            load_tokenizer, save_generation_config, train_bpe_tokenizer)
from recipes.entry import hydra_main

log = logging.getLogger("data.prepare")

TOKENIZER_KINDS = ("bpe", "phi4mini", "path")
REASONING_SOURCES = ("procedural", "gsm_symbolic")
# A ``kind: path`` directory has one of these (load_tokenizer's rule: a GPT-2 style snapshot has no tokenizer.json).


class _Corpus:
    """Pretraining text. ``corpus.files`` are streamed from disk on every use (any size); the Debian/stdlib
    corpus (a fixed ~10-100 MB) is collected at most once, and only when a step needs the text. Building one
    checks the inputs (a typo in a path fails now, not after the tokenizer is trained) and reads no text."""

    def __init__(self, corpus_cfg):
        self.corpus_cfg, self._docs = corpus_cfg, None
        self.files = [str(f) for f in corpus_cfg.files]
        if self.files:
            check_inputs(self.files)
        else:
            check_debian_packages(corpus_cfg.debian_packages)

    @property
    def sources(self) -> list[str]:
        if self.files:
            return self.files
        return sorted({d.source.split(":")[0] for d in self._collected()})

    def _collected(self) -> list[Document]:
        if self._docs is None:
            c = self.corpus_cfg
            self._docs = collect_corpus(c.debian_packages, c.include_stdlib, c.cache_dir, c.max_chars)
            log.info("corpus: %d documents, %.1f M characters", len(self._docs), sum(len(d.text) for d in self._docs) / 1e6)
        return self._docs

    def texts(self, skip: int = 0) -> Iterator[str]:
        """The documents' texts in order, after the first ``skip``."""
        if self.files:
            return iter_documents(self.files, self.corpus_cfg.text_field, skip)
        return (d.text for d in self._collected()[skip:])

    def input_id(self) -> str | None:
        """What a resumed preparation must match; None (collected corpus: small, redone from zero)."""
        return input_fingerprint(self.files, self.corpus_cfg.text_field) if self.files else None


@dataclass(frozen=True)
class Output:
    """One output of a preparation: ``what`` it is (for logs and the plan), its ``path``, and ``build``, which
    writes it. ``shard_set``: a kept one must have been tokenized with the (possibly rebuilt) tokenizer."""

    what: str
    path: Path
    build: Callable[[], object]
    shard_set: bool = False


# ---- checks --------------------------------------------------------------------------------------------------
def _check_names(what: str, names: list[str], reserved: tuple[str, ...] = ()) -> None:
    if any(not n or n in reserved for n in names) or len(set(names)) != len(names):
        rule = f", non-empty and not in {reserved}" if reserved else " and non-empty"
        raise ValueError(f"{what} names must be unique{rule}: {names}")


def check_config(cfg: PrepareConfig) -> None:
    """Refuse a config that could not be prepared, before anything is built: stage and set names, the tokenizer
    kind (and directory), the reasoning source, and every SFT stage's chat JSONL (present and readable)."""
    _check_names("sft stage", [s.name for s in cfg.sft])
    _check_names("extra_pretrain", [e.name for e in cfg.extra_pretrain], RESERVED_NAMES)
    t = cfg.tokenizer
    if t.kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer.kind={t.kind!r}: expected one of {', '.join(TOKENIZER_KINDS)}")
    if t.kind == "path" and not is_tokenizer_dir(t.path):
        raise ValueError(f"tokenizer.path={t.path!r}: not a tokenizer directory (no {' / '.join(TOKENIZER_DEFINING_FILES)})")
    if cfg.reasoning.source not in REASONING_SOURCES:
        raise ValueError(f"reasoning.source={cfg.reasoning.source!r}: expected one of {', '.join(REASONING_SOURCES)}")
    for stage in cfg.sft:
        if stage.jsonl:
            check_readable(stage.jsonl)


# ---- the outputs ---------------------------------------------------------------------------------------------
def build_tokenizer(cfg: PrepareConfig, out: Path, corpus: _Corpus) -> None:
    t = cfg.tokenizer
    if t.kind == "bpe":
        train_bpe_tokenizer(_first_chars(corpus.texts(), t.train_chars), t.vocab_size, out, overwrite=cfg.overwrite)
    elif t.kind == "phi4mini":
        build_phi4mini_tokenizer(out, overwrite=cfg.overwrite)
    else:  # "path" (check_config refused any other kind); a model snapshot's weights stay where they are
        with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
            copy_tokenizer_files(t.path, tmp)
            if not (tmp / "generation_config.json").exists():
                save_generation_config(load_tokenizer(tmp), tmp)


def check_tokenizer_source(cfg: PrepareConfig, data: PreparedData) -> None:
    """Refuse a kept tokenizer copy (``kind: path``) whose source, ``tokenizer.path``, now holds another tokenizer
    (the path was changed, or the checkpoint replaced): the data would silently keep the old one. Like a kept
    shard set made with another tokenizer (``data.shards.check_compatible``), it is refused, not rebuilt:
    ``overwrite=true`` redoes the whole directory."""
    t = cfg.tokenizer
    if t.kind != "path" or cfg.overwrite or not data.tokenizer.exists() or not is_tokenizer_dir(t.path):
        return  # nothing kept, or no source to compare it with (check_config refuses that before any build)
    if _unchanged_copy(Path(t.path), data.tokenizer):
        return
    copy, source = fingerprint(data.tokenizer), fingerprint(t.path)
    if copy != source:
        raise TokenizerMismatchError(
            f"tokenizer.path={t.path} holds tokenizer {source[:12]}, but {data.tokenizer} was copied from another "
            f"tokenizer ({copy[:12]}) and everything prepared in {data.root} was made with that one; set "
            "overwrite=true to redo the directory with the new tokenizer, or choose another out_dir")


# Settings that change where or how the directory is written, not what it holds.
_NOT_CONTENT = frozenset({"out_dir", "overwrite", "dry_run", "num_proc", "corpus.cache_dir"})


class PreparedWithOtherSettingsError(ValueError):
    """A complete directory (``DONE``) was prepared with settings other than the ones asked for now."""


def _flat(tree: Any, key: str = "") -> dict[str, Any]:
    """``{dotted key: value}`` of a nested mapping; lists and empty mappings are values. Unlike
    ``train.runtime.run_dir.flat_config``, which splits lists by index, a list stays whole here: keys only one side
    has are not compared, so a list that grew or shrank must still show as one differing value."""
    if not isinstance(tree, dict) or not tree:
        return {key: tree}
    return {k: v for name, value in tree.items() for k, v in _flat(value, f"{key}.{name}" if key else name).items()}


def check_done_config(cfg: PrepareConfig, data: PreparedData) -> None:
    """Refuse a complete directory whose ``DONE`` records other content settings than ``cfg`` (a recipe changed
    since, e.g. more held-out problems): every stage would otherwise read the old data without a word. Keys that
    one side lacks (a setting added or removed since) are not compared."""
    if cfg.overwrite or not data.done.exists():
        return
    try:
        recorded = json.loads(data.done.read_text()).get("config")
    except (json.JSONDecodeError, AttributeError):
        recorded = None
    if not isinstance(recorded, dict):
        return  # a DONE from before the config was recorded: nothing to compare with
    was, now = _flat(recorded), _flat(_config_dict(cfg))
    differ = [f"{key} = {was[key]!r} there, {now[key]!r} asked" for key in sorted(was.keys() & now.keys())
              if key not in _NOT_CONTENT and was[key] != now[key]]
    if differ:
        raise PreparedWithOtherSettingsError(
            f"{data.done}: {data.root} was prepared with other settings ({'; '.join(differ)}); set overwrite=true "
            "to redo the directory with these settings, or choose another out_dir")


def _unchanged_copy(source: Path, copy: Path) -> bool:
    """The copy's tokenizer files are byte for byte the source's (plus the generation_config.json that
    build_tokenizer writes when the source has none): the same tokenizer, known without loading either, which
    for a GPT-2 style vocabulary of 200k entries costs seconds."""
    names = {n for n in TOKENIZER_FILES if (source / n).is_file()}
    extra = {n for n in TOKENIZER_FILES if (copy / n).is_file()} - names
    return extra <= {"generation_config.json"} and all(
        (copy / n).is_file() and (copy / n).read_bytes() == (source / n).read_bytes() for n in names)


def _first_chars(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Texts until ``max_chars`` characters have been passed on (0 = all), streamed."""
    total = 0
    for text in texts:
        if max_chars and total >= max_chars:
            return
        yield text
        total += len(text)


def reasoning_records(cfg: PrepareConfig, n: int, split: str, seed: int, families=None, with_values: bool = False):
    r = cfg.reasoning
    if r.source == "procedural":
        fams = list(families or r.families) or None
        gen = reasoning.generate_problems_with_values if with_values else reasoning.generate_problems
        return gen(n, split, seed, fams)
    if r.source == "gsm_symbolic":
        return reasoning.generate_gsm_symbolic(n, split, seed, r.heldout_fraction)
    raise ValueError(f"reasoning.source={r.source!r}: expected one of {', '.join(REASONING_SOURCES)}")


def _pretrain_outputs(cfg: PrepareConfig, data: PreparedData, corpus: _Corpus) -> list[Output]:
    sets = [("pretrain", corpus, cfg.pretrain.val_fraction)] if cfg.pretrain.enabled else []
    sets += [(e.name, _Corpus(e.corpus), e.val_fraction) for e in cfg.extra_pretrain]

    def shards(path: Path, source: _Corpus, val_fraction: float) -> Callable[[], object]:
        return lambda: write_pretrain_shards(source.texts, data.tokenizer, path, source.sources, val_fraction,
                                             cfg.seed, cfg.num_proc, cfg.pretrain.shard_tokens, cfg.overwrite,
                                             input_id=source.input_id())

    return [Output(f"{name} shards", data.shard_set(name), shards(data.shard_set(name), source, val_fraction), True)
            for name, source, val_fraction in sets]


def _reasoning_outputs(cfg: PrepareConfig, data: PreparedData) -> list[Output]:
    def problems(split: str, n: int) -> Callable[[], object]:
        return lambda: write_jsonl(data.reasoning(split), reasoning_records(cfg, n, split, cfg.seed), cfg.overwrite)

    r = cfg.reasoning
    return [Output(f"reasoning {split}", data.reasoning(split), problems(split, n))
            for split, n in (("train", r.n_train), ("heldout", r.n_heldout))]


def _sft_outputs(cfg: PrepareConfig, data: PreparedData) -> list[Output]:
    def chats(k: int, stage) -> Callable[[], object]:
        def build():
            if stage.jsonl:
                records = [{"messages": m} for m in read_chat_jsonl(stage.jsonl)]
            else:
                # Seeds differ from reasoning/train.jsonl's so stages see other problems of the same templates.
                problems = reasoning_records(cfg, stage.n_examples, "train", cfg.seed + 1 + k, stage.families)
                records = [reasoning_to_chat(p) for p in problems]
            write_jsonl(data.sft_jsonl(stage.name), records, cfg.overwrite)
        return build

    def shards(stage) -> Callable[[], object]:
        jsonl = data.sft_jsonl(stage.name)
        return lambda: write_sft_shards(read_chat_jsonl(jsonl), data.tokenizer, data.sft_shards(stage.name),
                                        [str(stage.jsonl or jsonl)], stage.val_fraction, cfg.seed,
                                        overwrite=cfg.overwrite)

    out = []
    for k, stage in enumerate(cfg.sft):
        out.append(Output(f"sft {stage.name} jsonl", data.sft_jsonl(stage.name), chats(k, stage)))
        out.append(Output(f"sft {stage.name} shards", data.sft_shards(stage.name), shards(stage), True))
    return out


def _preference_outputs(cfg: PrepareConfig, data: PreparedData) -> list[Output]:
    def pairs(split: str, n: int, seed: int) -> Callable[[], object]:
        return lambda: write_jsonl(data.preference(split), pairs_from_corruptions(
            reasoning_records(cfg, n, split, seed, with_values=True), seed), cfg.overwrite)

    p = cfg.preference
    if not p.enabled:
        return []
    return [Output(f"preference {split}", data.preference(split), pairs(split, n, seed))
            for split, n, seed in (("train", p.n_train, cfg.seed + 100), ("heldout", p.n_heldout, cfg.seed + 200))]


def plan(cfg: PrepareConfig, data: PreparedData) -> list[Output]:
    """Every output of ``cfg``, in build order (the tokenizer first: the shard sets need it). Checks the corpus
    inputs; touches no output."""
    corpus = _Corpus(cfg.corpus)
    tokenizer = Output("tokenizer", data.tokenizer, lambda: build_tokenizer(cfg, data.tokenizer, corpus))
    return [tokenizer, *_pretrain_outputs(cfg, data, corpus), *_reasoning_outputs(cfg, data),
            *_sft_outputs(cfg, data), *_preference_outputs(cfg, data)]


# ---- running -------------------------------------------------------------------------------------------------
def _action(output: Output, cfg: PrepareConfig) -> str:
    """``build`` (missing), ``rebuild`` (exists, overwrite=true) or ``reuse`` (exists: outputs are atomic, so
    an existing one is complete)."""
    if not output.path.exists():
        return "build"
    return "rebuild" if cfg.overwrite else "reuse"


def _run(output: Output, cfg: PrepareConfig, data: PreparedData) -> None:
    if _action(output, cfg) == "reuse":
        if output.shard_set:
            check_compatible(output.path, data.tokenizer, None)
        log.info("%s: %s exists, skipping (overwrite=true redoes it)", output.what, output.path)
        return
    t0 = time.perf_counter()
    output.build()
    log.info("%s: wrote %s in %.1f s", output.what, output.path, time.perf_counter() - t0)


def _config_dict(cfg: PrepareConfig) -> dict[str, Any]:
    return (OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig)
            else OmegaConf.to_container(OmegaConf.structured(cfg)))


def _write_done(cfg: PrepareConfig, data: PreparedData) -> None:
    """``DONE``: the config that completed the directory and the tokenizer's fingerprint."""
    summary = {"config": _config_dict(cfg), "tokenizer_fingerprint": fingerprint(data.tokenizer)}
    atomic_write_text(data.done, json.dumps(summary, indent=2) + "\n", overwrite=True)


def _corpus_inputs(c) -> dict[str, Any]:
    """Where a corpus's text comes from, for the dry-run plan."""
    if c.files:
        return {"files": [str(f) for f in c.files], "text_field": c.text_field}
    return {"debian_packages": list(c.debian_packages), "include_stdlib": c.include_stdlib, "cache_dir": c.cache_dir,
            "max_chars": c.max_chars}


def dry_run(cfg: PrepareConfig) -> dict[str, Any]:
    """What ``prepare(cfg)`` would do, after every check it would make up front; writes nothing.

    Checks the config and the inputs (corpus files present, readable and of a known format; SFT chat JSONL
    parsed; Debian package names known) and that every shard set it would keep matches the kept tokenizer.
    Each output gets an ``action``: ``build`` / ``rebuild`` (written), ``reuse`` (kept), or ``skip`` when
    ``DONE`` says the directory is complete (a run does nothing then).
    """
    data = PreparedData(cfg.out_dir)
    check_config(cfg)
    check_tokenizer_source(cfg, data)
    check_done_config(cfg, data)
    for stage in cfg.sft:
        if stage.jsonl:
            read_chat_jsonl(stage.jsonl)  # a malformed record fails now, naming file and line
    outputs = plan(cfg, data)
    complete = data.done.exists() and not cfg.overwrite
    rows = []
    for o in outputs:
        action = "skip" if complete else _action(o, cfg)
        if action == "reuse" and o.shard_set and data.tokenizer.exists():
            check_compatible(o.path, data.tokenizer, None)
        rows.append({"what": o.what, "path": str(o.path), "exists": o.path.exists(), "action": action})
    rows.append({"what": "DONE", "path": str(data.done), "exists": data.done.exists(),
                 "action": "skip" if complete else "rebuild" if data.done.exists() else "build"})
    inputs = {"corpus": _corpus_inputs(cfg.corpus),
              **{f"extra_pretrain {e.name}": _corpus_inputs(e.corpus) for e in cfg.extra_pretrain},
              **{f"sft {s.name}": s.jsonl for s in cfg.sft if s.jsonl}}
    if cfg.tokenizer.kind == "path":
        inputs["tokenizer"] = cfg.tokenizer.path
    disabled = [name for name, on in (("pretrain", cfg.pretrain.enabled), ("preference", cfg.preference.enabled)) if not on]
    return {"out_dir": str(data.root), "complete": complete, "overwrite": bool(cfg.overwrite), "inputs": inputs,
            "outputs": rows, "disabled": disabled}


def prepare(cfg: PrepareConfig) -> Path:
    """Build all outputs of ``cfg`` (see module docstring); returns ``out_dir``. With ``dry_run`` prints the
    plan (:func:`dry_run`) as one JSON line ``{"dry_run": {...}}`` instead and writes nothing."""
    data = PreparedData(cfg.out_dir)
    if cfg.dry_run:
        print(json.dumps({"dry_run": dry_run(cfg)}), flush=True)
        return data.root
    check_tokenizer_source(cfg, data)  # a complete directory too: its tokenizer may no longer be the one asked for
    check_done_config(cfg, data)  # and its recipe may have changed since
    if data.done.exists() and not cfg.overwrite:
        log.info("%s is complete (DONE exists); nothing to do (overwrite=true redoes everything)", data.root)
        return data.root  # reading a complete directory takes no lock: it may be read-only, or shared
    check_config(cfg)
    outputs = plan(cfg, data)
    # One writer: a second prepare into this directory would resume into the same partial shard files.
    with RunLock(data.lock, elsewhere="another out_dir"):
        data.done.unlink(missing_ok=True)  # overwrite=true: the set is incomplete until this run writes DONE again
        for output in outputs:
            _run(output, cfg, data)
        _write_done(cfg, data)
    log.info("done: %s", data.root)
    return data.root


def run_recipe(cfg: DictConfig) -> int:
    """Prepare the data a composed recipe describes; returns the process exit status."""
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", force=True)
    try:
        prepare(cfg)
    except RunDirLockedError as e:  # the trainers' exit status for a held directory (train.engine.launch)
        print(f"[data.prepare] {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


main = hydra_main("prepare", register_prepare_schema, run_recipe)


if __name__ == "__main__":
    main()
