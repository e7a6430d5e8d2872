"""Streaming document readers: every input format, compression, text field, skipping (resume), file:line errors."""
from __future__ import annotations

import gzip
import json

import pytest

from data.documents import count_documents, input_fingerprint, iter_documents
from data.jsonl import DataFormatError

TEXTS = [f"document {i}: " + "word " * (i % 7) for i in range(40)]


def _jsonl(texts, field="text"):
    return "".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts))


@pytest.fixture
def inputs(tmp_path):
    """The same 40 documents in every format (split across files), text field ``body``."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    (tmp_path / "a.jsonl").write_text(_jsonl(TEXTS[:5], "body") + "\n")  # a blank line is allowed
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(_jsonl(TEXTS[5:10], "body").encode()))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl(TEXTS[10:15], "body").encode()))
    pq.write_table(pa.table({"body": TEXTS[15:30]}), tmp_path / "d.parquet", row_group_size=4)
    datasets.Dataset.from_dict({"body": TEXTS[30:39]}).save_to_disk(str(tmp_path / "e_saved"))
    (tmp_path / "f.txt.gz").write_bytes(gzip.compress(TEXTS[39].encode()))
    return [tmp_path / n for n in ("a.jsonl", "b.json.gz", "c.jsonl.zst", "d.parquet", "e_saved", "f.txt.gz")]


def test_every_format_streams_in_order_with_a_text_field(inputs):
    assert list(iter_documents(inputs, text_field="body")) == TEXTS
    assert [count_documents(f, "body") for f in inputs] == [5, 5, 5, 15, 9, 1]


@pytest.mark.parametrize("skip", [0, 3, 5, 12, 16, 19, 30, 38, 39, 40])
def test_skip_equals_slicing(inputs, skip):
    # Resuming skips whole files / Parquet row groups without reading them; the result must equal a slice.
    assert list(iter_documents(inputs, text_field="body", skip=skip)) == TEXTS[skip:]


def test_saved_dataset_dict_and_wrong_field_are_clear_errors(tmp_path, inputs):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataFormatError, match=r"dd: a DatasetDict with splits \['train'\]; pass one split"):
        list(iter_documents([tmp_path / "dd"]))
    with pytest.raises(DataFormatError, match=r"e_saved: no column 'text'"):
        list(iter_documents([inputs[4]]))
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(ValueError, match="not one written by datasets"):
        list(iter_documents([tmp_path / "plain_dir"]))


def test_errors_in_compressed_files_name_the_line(tmp_path):
    import zstandard

    body = '{"text": "ok"}\n{"text": "ok"}\n{"text": broken}\n'
    (tmp_path / "x.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body.encode()))
    with pytest.raises(DataFormatError, match=r"x\.jsonl\.zst:3: malformed JSON"):
        list(iter_documents([tmp_path / "x.jsonl.zst"]))
    (tmp_path / "y.jsonl.gz").write_bytes(gzip.compress(b'{"text": "ok"}\n{"text": 5}\n'))
    with pytest.raises(DataFormatError, match=r"y\.jsonl\.gz:2: field 'text' is not a string"):
        list(iter_documents([tmp_path / "y.jsonl.gz"]))
    (tmp_path / "z.jsonl.gz").write_bytes(gzip.compress(b'{"text": "ok"}\n' * 100)[:40])  # truncated download
    with pytest.raises(DataFormatError, match=r"z\.jsonl\.gz:\d+: unreadable compressed data"):
        list(iter_documents([tmp_path / "z.jsonl.gz"]))


def test_parquet_null_is_an_error_naming_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b", None]}), tmp_path / "n.parquet")
    with pytest.raises(DataFormatError, match=r"n\.parquet: row 3: field 'text' is not a string"):
        list(iter_documents([tmp_path / "n.parquet"]))


def test_missing_input_fails_before_reading(tmp_path, inputs):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        iter_documents([inputs[0], tmp_path / "nope.jsonl"])


def test_input_fingerprint_changes_with_the_content(tmp_path, inputs):
    before = input_fingerprint(inputs, "body")
    assert before == input_fingerprint(inputs, "body") and before != input_fingerprint(inputs, "text")
    inputs[0].write_text(_jsonl(TEXTS[:6], "body"))
    assert input_fingerprint(inputs, "body") != before
