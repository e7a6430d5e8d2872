"""Bad input is a clear error naming the file and line; nothing half-written is left behind."""
from __future__ import annotations

import json
import os

import pytest

from data.atomic import OutputExistsError, atomic_write_text
from data.jsonl import DataFormatError, read_jsonl, write_jsonl
from data.documents import iter_documents
from data.pretrain_shards import write_pretrain_shards


def test_malformed_jsonl_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "ok"}\n{"text": "broken\n')
    with pytest.raises(DataFormatError, match=r"a\.jsonl:2: malformed JSON"):
        read_jsonl(p)


def test_record_without_expected_field(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text('{"text": "ok"}\n\n{"body": "x"}\n')
    with pytest.raises(DataFormatError, match=r"b\.jsonl:3: record lacks required field\(s\) \['text'\]"):
        read_jsonl(p, required=("text",))
    p.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(DataFormatError, match=r"b\.jsonl:2: expected a JSON object"):
        read_jsonl(p)


def test_empty_file(tmp_path):
    for name, body in (("e.jsonl", ""), ("w.jsonl", "\n  \n")):
        (tmp_path / name).write_text(body)
        with pytest.raises(DataFormatError, match=rf"{name}: empty file"):
            read_jsonl(tmp_path / name)
    (tmp_path / "e.txt").write_text("   \n")
    with pytest.raises(DataFormatError, match=r"e\.txt: empty file"):
        list(iter_documents([tmp_path / "e.txt"]))


def test_non_utf8(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: not valid UTF-8"):
        read_jsonl(p)
    t = tmp_path / "d.txt"
    t.write_bytes(b"line one\nline two\n\xff\xfe bad\n")
    with pytest.raises(DataFormatError, match=r"d\.txt:3: not valid UTF-8"):
        list(iter_documents([t]))


def test_iter_documents_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first document\nwith two lines")
    (tmp_path / "b.jsonl").write_text('{"body": "second"}\n{"body": "third"}\n')
    import datasets

    datasets.Dataset.from_dict({"body": ["fourth", "fifth"]}).to_parquet(str(tmp_path / "c.parquet"))
    texts = list(iter_documents([tmp_path / "b.jsonl", tmp_path / "c.parquet"], text_field="body"))
    assert texts == ["second", "third", "fourth", "fifth"]
    assert list(iter_documents([tmp_path / "a.txt"])) == ["first document\nwith two lines"]
    with pytest.raises(DataFormatError, match=r"b\.jsonl:1: record lacks required field"):
        list(iter_documents([tmp_path / "b.jsonl"]))
    with pytest.raises(DataFormatError, match=r"c\.parquet: no column 'text'"):
        list(iter_documents([tmp_path / "c.parquet"]))
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "x.csv").write_text("a,b")
        list(iter_documents([tmp_path / "x.csv"]))


def test_pretrain_shards_from_files_and_no_silent_overwrite(tmp_path, bpe_dir):
    import numpy as np

    from data.shards import open_split, read_manifest
    from data.tokenizer import load_tokenizer

    texts = [f"Document number {i}: " + "some words here. " * (i % 5 + 1) for i in range(30)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    ds = list(iter_documents([tmp_path / "in.jsonl"]))
    out = write_pretrain_shards(ds, bpe_dir, tmp_path / "pre", ["in.jsonl"], val_fraction=0.2, seed=0, num_proc=2)
    m = read_manifest(out)
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 30
    tok = load_tokenizer(bpe_dir)
    # Each document is its text's ids followed by EOS, in order within its split.
    _, shards = open_split(out, "train")
    first = np.asarray(shards[0].tokens[: shards[0].doc_starts[1]])
    assert first[-1] == tok.eos_token_id
    assert tok.decode(first[:-1].tolist()) in texts
    before = (out / "train_00000.bin").read_bytes()
    with pytest.raises(OutputExistsError):
        write_pretrain_shards(ds, bpe_dir, out, ["x"], val_fraction=0.0)
    assert (out / "train_00000.bin").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "pre"]


def test_atomic_writes(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"a": 1}])
    with pytest.raises(OutputExistsError):
        write_jsonl(tmp_path / "x.jsonl", [{"a": 2}])
    assert read_jsonl(tmp_path / "x.jsonl") == [{"a": 1}]
    write_jsonl(tmp_path / "x.jsonl", [{"a": 2}], overwrite=True)
    assert read_jsonl(tmp_path / "x.jsonl") == [{"a": 2}]

    class Boom:
        def __iter__(self):
            yield {"a": 3}
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(tmp_path / "y.jsonl", Boom())
    atomic_write_text(tmp_path / "z.txt", "hi")
    assert sorted(os.listdir(tmp_path)) == ["x.jsonl", "z.txt"]
