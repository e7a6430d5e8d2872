"""``python -m data.prepare``: layout per docs/design.md, idempotence, strict overrides, the full demo (slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.dir_lock import RunDirLockedError, RunLock
from data.loader import PackedLoader
from data.shards import check_compatible, read_manifest
from tests.data.builders import check_prepared_layout

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes" / "prepare"


def _cfg(overrides, config_name="demo"):
    from hydra import compose, initialize_config_dir

    from data.prepare_config import register_prepare_schema

    register_prepare_schema()
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


def _small(tmp_path, corpus_files, extra=()):
    return [f"out_dir={tmp_path / 'out'}", f"corpus.files=[{','.join(map(str, corpus_files))}]",
            "tokenizer.vocab_size=320", "reasoning.n_train=60", "reasoning.n_heldout=20",
            "sft.0.n_examples=40", "sft.1.n_examples=50", "preference.n_train=30", "preference.n_heldout=10",
            "num_proc=1", "pretrain.val_fraction=0.2", *extra]


def test_prepare_small_layout_and_idempotence(tmp_path, sample_texts, caplog):
    from data.prepare import prepare

    files = []
    for i in range(0, len(sample_texts), 20):
        f = tmp_path / f"doc{i}.txt"
        f.write_text("\n".join(sample_texts[i:i + 20]))
        files.append(f)
    cfg = _cfg(_small(tmp_path, files))
    out = prepare(cfg)
    check_prepared_layout(out)
    assert read_manifest(out / "pretrain")["sources"] == [str(f) for f in files]
    loader = PackedLoader([(out / "sft" / "math", 1.0)], seq_len=128, global_batch_rows=2, split_documents=False)
    assert loader.next_batch()["input_ids"].shape == (2, 128)

    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    prepare(cfg)  # DONE exists: nothing is redone
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp
    (out / "DONE").unlink()
    (out / "preference" / "heldout.jsonl").unlink()
    prepare(cfg)  # only the missing piece is rebuilt
    assert (out / "preference" / "heldout.jsonl").exists()
    assert (out / "pretrain" / "manifest.json").stat().st_mtime_ns == stamp[out / "pretrain" / "manifest.json"]
    prepare(_cfg(_small(tmp_path, files, ["overwrite=true"])))
    assert (out / "pretrain" / "manifest.json").stat().st_mtime_ns != stamp[out / "pretrain" / "manifest.json"]
    check_prepared_layout(out)


def test_a_complete_directory_prepared_with_other_settings_is_refused(tmp_path, sample_texts, capsys):
    """A recipe changed after its data was prepared (the demo's 300 held-out problems became 1,000): the complete
    directory is refused, naming DONE and the setting, instead of being read as if it were the new recipe's."""
    from data.prepare import PreparedWithOtherSettingsError, prepare

    f = tmp_path / "c.txt"
    f.write_text("\n".join(sample_texts))
    out = prepare(_cfg(_small(tmp_path, [f])))
    done = (out / "DONE").read_text()
    changed = _small(tmp_path, [f], ["reasoning.n_heldout=30"])
    for overrides in (changed, [*changed, "dry_run=true"]):
        with pytest.raises(PreparedWithOtherSettingsError,
                           match=rf"{out / 'DONE'}: .*reasoning\.n_heldout = 20 there, 30 asked.*overwrite=true"):
            prepare(_cfg(overrides))
    assert (out / "DONE").read_text() == done
    prepare(_cfg(_small(tmp_path, [f], ["num_proc=2"])))  # how it is written, not what: accepted as complete
    prepare(_cfg([*changed, "overwrite=true"]))
    assert len((out / "reasoning" / "heldout.jsonl").read_text().splitlines()) == 30


def test_extra_pretrain_set_for_a_mixture(tmp_path, sample_texts):
    from data.prepare import prepare

    prose, code = tmp_path / "prose.txt", tmp_path / "code.jsonl"
    prose.write_text("\n".join(sample_texts[:100]))
    code.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_texts[100:]))
    extra = ["extra_pretrain=[{name: code, corpus: {files: [%s], debian_packages: []}, val_fraction: 0.3}]" % code]
    out = prepare(_cfg(_small(tmp_path, [prose], extra)))
    assert read_manifest(out / "code")["sources"] == [str(code)]
    assert read_manifest(out / "code")["kind"] == "pretrain"
    assert PackedLoader([(out / "pretrain", 0.8), (out / "code", 0.2)], seq_len=32, global_batch_rows=4).next_batch()["input_ids"].shape == (4, 32)
    with pytest.raises(ValueError, match="extra_pretrain names"):
        prepare(_cfg(_small(tmp_path, [prose], ["extra_pretrain=[{name: sft}]", "overwrite=true"])))


def test_prepare_with_existing_tokenizer_dir(tmp_path, bpe_dir, sample_texts):
    from data.prepare import prepare
    from data.tokenizer import fingerprint

    f = tmp_path / "c.txt"
    f.write_text("\n".join(sample_texts))
    out = prepare(_cfg(_small(tmp_path, [f], ["tokenizer.kind=path", f"tokenizer.path={bpe_dir}"])))
    assert fingerprint(out / "tokenizer") == fingerprint(bpe_dir)
    check_compatible(out / "pretrain", bpe_dir, 400)


def test_kept_shards_from_another_tokenizer_are_refused(tmp_path, sample_texts):
    from data.prepare import prepare
    from data.shards import IncompatibleShardsError

    f = tmp_path / "c.txt"
    f.write_text("\n".join(sample_texts))
    out = prepare(_cfg(_small(tmp_path, [f])))
    import shutil

    shutil.rmtree(out / "tokenizer")
    (out / "DONE").unlink()
    with pytest.raises(IncompatibleShardsError):
        prepare(_cfg(_small(tmp_path, [f], ["tokenizer.vocab_size=300"])))


def _dry_run(capsys, overrides) -> dict:
    from data.prepare import prepare

    prepare(_cfg([*overrides, "dry_run=true"]))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"dry_run"')]
    assert len(lines) == 1
    return lines[0]["dry_run"]


def test_dry_run_plans_and_writes_nothing(tmp_path, sample_texts, capsys):
    f = tmp_path / "c.txt"
    f.write_text("\n".join(sample_texts))
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    before = sorted(tmp_path.rglob("*"))
    plan = _dry_run(capsys, _small(tmp_path, [f], [f"sft.0.jsonl={chat}"]))
    assert sorted(tmp_path.rglob("*")) == before  # no out_dir, nothing anywhere
    out = tmp_path / "out"
    assert plan["out_dir"] == str(out) and not plan["complete"] and plan["inputs"]["corpus"]["files"] == [str(f)]
    assert plan["inputs"]["sft basic"] == str(chat)
    rows = {r["what"]: r for r in plan["outputs"]}
    assert list(rows) == ["tokenizer", "pretrain shards", "reasoning train", "reasoning heldout", "sft basic jsonl",
                          "sft basic shards", "sft math jsonl", "sft math shards", "preference train",
                          "preference heldout", "DONE"]
    assert rows["sft math shards"]["path"] == str(out / "sft" / "math")
    assert rows["reasoning heldout"]["path"] == str(out / "reasoning" / "heldout.jsonl")
    assert all(r["action"] == "build" and not r["exists"] for r in rows.values())


def test_dry_run_reports_kept_outputs_and_a_complete_directory(tmp_path, bpe_dir, sample_texts, capsys):
    from data.prepare import prepare

    f = tmp_path / "c.txt"
    f.write_text("\n".join(sample_texts))
    overrides = _pretrain_only(tmp_path, tmp_path / "out", [f], bpe_dir)
    out = prepare(overrides)
    (out / "DONE").unlink()
    (out / "reasoning" / "heldout.jsonl").unlink()
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    args = [f"out_dir={out}", f"corpus.files=[{f}]", "tokenizer.kind=path", f"tokenizer.path={bpe_dir}",
            "preference.enabled=false", "reasoning.n_train=5", "reasoning.n_heldout=5"]
    rows = {r["what"]: r for r in _dry_run(capsys, args)["outputs"]}
    assert rows["pretrain shards"]["action"] == "reuse" and rows["reasoning heldout"]["action"] == "build"
    assert rows["DONE"]["action"] == "build"
    assert rows["tokenizer"]["exists"] and "preference train" not in rows
    rows = {r["what"]: r for r in _dry_run(capsys, [*args, "overwrite=true"])["outputs"]}
    assert rows["pretrain shards"]["action"] == "rebuild"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp


def test_dry_run_fails_on_a_missing_input_naming_it(tmp_path, sample_texts, capsys):
    from data.prepare import prepare

    f = tmp_path / "c.txt"
    f.write_text("\n".join(sample_texts))
    missing = tmp_path / "nope" / "corpus.jsonl"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        prepare(_cfg([*_small(tmp_path, [f, missing]), "dry_run=true"]))
    with pytest.raises(FileNotFoundError, match="chat_typo.jsonl"):
        prepare(_cfg([*_small(tmp_path, [f]), f"sft.1.jsonl={tmp_path / 'chat_typo.jsonl'}", "dry_run=true"]))
    with pytest.raises(ValueError, match=r"sft stage names must be unique"):
        prepare(_cfg([*_small(tmp_path, [f]), "sft.1.name=basic", "dry_run=true"]))
    with pytest.raises(ValueError, match="no text layout known for Debian package 'python3.11-dox'"):
        prepare(_cfg([f"out_dir={tmp_path / 'out'}", "corpus.debian_packages=[python3.11-dox]", "dry_run=true"]))
    assert not (tmp_path / "out").exists() and not capsys.readouterr().out


def test_dry_run_from_the_command_line(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "data.prepare", "--config-name=demo", "dry_run=true", f"out_dir={out}",
                        f"corpus.cache_dir={tmp_path / 'cache'}"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"dry_run"')]
    assert len(plan) == 1 and plan[0]["dry_run"]["inputs"]["corpus"]["debian_packages"] == ["python3.11-doc"]
    assert not list(tmp_path.iterdir())


def test_unknown_override_key_is_an_error_naming_it():
    r = subprocess.run([sys.executable, "-m", "data.prepare", "tokenizer.vocab_sise=10"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "vocab_sise" in r.stderr + r.stdout


def test_full_recipe_composes_against_the_schema():
    cfg = _cfg([], config_name="full")
    assert cfg.tokenizer.kind == "phi4mini" and cfg.reasoning.source == "gsm_symbolic" and [s.name for s in cfg.sft] == ["distill", "long_cot"]
    assert cfg.extra_pretrain[0].name == "code" and cfg.extra_pretrain[0].corpus.include_stdlib
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="n_trian"):
        _cfg(["reasoning.n_trian=5"])


def _pretrain_only(tmp_path, out, files, tok_dir, extra=()):
    return _cfg([f"out_dir={out}", f"corpus.files=[{','.join(map(str, files))}]", "tokenizer.kind=path",
                 f"tokenizer.path={tok_dir}", "sft.0.n_examples=5", "sft.1.n_examples=5", "preference.enabled=false", "reasoning.n_train=5",
                 "reasoning.n_heldout=5", "pretrain.shard_tokens=2000", "pretrain.val_fraction=0.1", "num_proc=1",
                 *extra])


def test_killed_prepare_resumes_to_the_uninterrupted_result(tmp_path, bpe_dir, monkeypatch, caplog):
    """Compressed JSON Lines + Parquet input; a crash right after a checkpoint; the rerun resumes there."""
    import gzip
    import logging
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from data.prepare import prepare
    from data.shards import ShardSetWriter

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    texts = [" ".join(words[(i * 7 + k) % 10] for k in range(i % 90 + 3)) + f" {i}" for i in range(400)]
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"body": t}) + "\n" for t in texts[:250]).encode()))
    pq.write_table(pa.table({"body": texts[250:]}), tmp_path / "b.parquet", row_group_size=50)
    files = [tmp_path / "a.jsonl.gz", tmp_path / "b.parquet"]
    cfg = _pretrain_only(tmp_path, tmp_path / "out", files, bpe_dir, ["corpus.text_field=body"])
    uninterrupted = {p.name: p.read_bytes() for p in (prepare(cfg) / "pretrain").iterdir()}
    shutil.rmtree(tmp_path / "out")  # same config, same out_dir: the manifest must come out identical

    class Killed(Exception):
        pass

    original = ShardSetWriter.checkpoint

    def checkpoint_then_die(self, position):
        original(self, position)
        if position["documents"] > 150:
            raise Killed

    monkeypatch.setattr(ShardSetWriter, "checkpoint", checkpoint_then_die)
    with pytest.raises(Killed):
        prepare(cfg)
    assert not (tmp_path / "out" / "pretrain").exists() and (tmp_path / "out" / "pretrain.partial").is_dir()
    monkeypatch.setattr(ShardSetWriter, "checkpoint", original)
    with caplog.at_level(logging.INFO, logger="data.pretrain_shards"):
        out = prepare(cfg)
    assert "resuming after" in caplog.text
    resumed = {p.name: p.read_bytes() for p in (out / "pretrain").iterdir()}
    assert sorted(resumed) == sorted(uninterrupted) and len(resumed) > 6
    assert resumed == uninterrupted  # manifest.json included
    splits = read_manifest(out / "pretrain")["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 400


def test_a_held_directory_is_refused_and_left_untouched(tmp_path, sample_texts):
    """Two prepares into one directory would resume into the same partial shards: the second is refused, naming
    the holder, before it writes anything; once the holder is gone the directory builds normally."""
    from data.prepare import prepare

    files = []
    for i in range(0, len(sample_texts), 20):  # several files, as in the layout test: a val split needs a few
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text("\n".join(sample_texts[i:i + 20]))
    cfg = _cfg(_small(tmp_path, files))
    out = tmp_path / "out"
    with RunLock(out / "prepare.lock"):
        with pytest.raises(RunDirLockedError, match=rf"pid {os.getpid()} .*or use another out_dir"):
            prepare(cfg)
        cli = subprocess.run([sys.executable, "-m", "data.prepare", *_small(tmp_path, files)], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert cli.returncode == 4 and f"pid {os.getpid()}" in cli.stderr, cli.stderr[-2000:]
        assert [p.name for p in out.iterdir()] == ["prepare.lock"]
    check_prepared_layout(prepare(cfg))
